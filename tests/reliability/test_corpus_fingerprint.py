"""Defect 2: resume and ``jmlr eval --run`` verify the corpus fingerprint and refuse another corpus."""
import pytest

from _reliability import tiny_data, write_corpus, write_qa


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_bert_dir, tiny_reader_dir):
    """A 2-step run whose config names its corpus file (as `jmlr train` records it)."""
    from jmlr.config import load_config
    from jmlr.reader import Reader
    from jmlr.retriever import DualEncoder
    from jmlr.train.trainer import JointTrainer

    from _reliability import BASE

    root = tmp_path_factory.mktemp("fp")
    corpus, qa = tiny_data()
    write_corpus(root / "corpus.jsonl", corpus)
    write_qa(root / "qa.jsonl", qa)
    cfg = load_config(None, BASE + [f"output_dir={root / 'run'}", "optim.steps=2", "checkpoint_every=1",
                                    f"data.corpus={root / 'corpus.jsonl'}", "data.format=jmlr"])
    JointTrainer(cfg, DualEncoder.from_pretrained(tiny_bert_dir), Reader.from_pretrained(tiny_reader_dir,
                 max_length=128), corpus, qa, [], progress=False).train()
    return root, corpus, qa


def _reordered(corpus):
    from jmlr.data import Corpus

    return Corpus(list(corpus)[::-1])


def test_resume_refuses_a_reordered_corpus(trained, make_trainer, tmp_path):
    from jmlr.index import IndexMismatchError

    root, corpus, qa = trained
    t = make_trainer(tmp_path / "b", [f"resume={root / 'run' / 'checkpoints' / 'step-1'}", "optim.steps=3"],
                     data=(_reordered(corpus), qa))
    with pytest.raises(IndexMismatchError, match="another corpus: both hold 24 passages, but their texts or order"):
        t.setup()


def test_resume_refuses_a_smaller_corpus_saying_so(trained, make_trainer, tmp_path):
    from jmlr.data import Corpus
    from jmlr.index import IndexMismatchError

    root, corpus, qa = trained
    small = Corpus(list(corpus)[:20])
    t = make_trainer(tmp_path / "b", [f"resume={root / 'run' / 'checkpoints' / 'step-1'}", "optim.steps=3"],
                     data=(small, qa))
    with pytest.raises(IndexMismatchError, match="the index holds 24 passages but the corpus has 20"):
        t.setup()


def test_resume_with_the_same_corpus_still_works(trained, make_trainer, tmp_path):
    root, corpus, qa = trained
    t = make_trainer(tmp_path / "b", [f"resume={root / 'run' / 'checkpoints' / 'step-1'}", "optim.steps=2"],
                     data=(corpus, qa), dev=False)
    assert t.train()["steps"] == 2


def test_eval_run_refuses_a_changed_corpus_file(trained):
    from jmlr.eval.cli import evaluate_run
    from jmlr.index import IndexMismatchError

    root, corpus, qa = trained
    path = root / "corpus.jsonl"
    original = path.read_text()
    try:
        path.write_text("".join(reversed(original.splitlines(keepends=True))))
        with pytest.raises(IndexMismatchError, match="another corpus"):
            evaluate_run(str(root / "run"), str(root / "qa.jsonl"), "jmlr", retrieval=True, limit=2)
    finally:
        path.write_text(original)
    res = evaluate_run(str(root / "run"), str(root / "qa.jsonl"), "jmlr", retrieval=False, limit=2)
    assert res["n"] == 2
