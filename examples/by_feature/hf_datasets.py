"""Feature: Hugging Face datasets in. The corpus and the questions are datasets.Dataset objects with columns
of their own names; Corpus.from_hf and load_qa("hf", mapping=...) read them without per-row copies.

    python examples/by_feature/hf_datasets.py --quick
    # from the command line: jmlr index build --corpus DIR --corpus-format hf --hf-mapping text=abstract ...
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from train_medqa import build_parser, make_reader, run  # noqa: E402


def as_datasets(corpus, examples):
    """The bundled demo data as datasets with other column names (what a user's own data sets look like)."""
    import datasets

    docs = datasets.Dataset.from_dict({"pmid": list(corpus.ids), "abstract": corpus.texts(with_title=False),
                                       "heading": list(corpus.titles)})
    qa = datasets.Dataset.from_dict({
        "uid": [ex.id for ex in examples], "stem": [ex.question for ex in examples],
        "choices": [list(ex.options.values()) for ex in examples], "label": [ex.answer for ex in examples],
        "evidence": [list(ex.gold_passage_ids) for ex in examples]})
    return docs, qa


if __name__ == "__main__":
    args = build_parser(__doc__).parse_args()

    def make_trainer(cfg):
        from jmlr import Corpus, DualEncoder, JointTrainer, load_qa
        from jmlr.train.trainer import load_data

        train, dev, _, corpus = load_data(cfg)
        docs, qa = as_datasets(corpus, train + dev)
        corpus = Corpus.from_hf(docs, id="pmid", text="abstract", title="heading")
        mapping = {"id": "uid", "question": "stem", "options": "choices", "answer": "label",
                   "gold_passage_ids": "evidence"}
        questions = load_qa("hf", qa, mapping=mapping)
        train, dev = questions[:len(train)], questions[len(train):]
        print(f"from datasets: {len(corpus)} passages, {len(train)} train / {len(dev)} dev questions")
        return JointTrainer(cfg, DualEncoder.from_pretrained(cfg.retriever.model), make_reader(cfg), corpus, train,
                            dev, progress=not args.quick)

    run(args, [], make_trainer)
