"""Feature: bring your own SentenceTransformer. Its Pooling mode, Dense / Normalize modules and query /
document prompts carry over; the DualEncoder trains the instance's own modules.

    python examples/by_feature/sentence_transformers_model.py --quick
    python examples/by_feature/sentence_transformers_model.py --retriever intfloat/e5-small-v2   # e5 prompts apply
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from train_medqa import build_parser, make_reader, run  # noqa: E402


def sentence_transformer(name: str, pooling: str, dense: int):
    """``SentenceTransformer(name)`` for a sentence-transformers model; a plain HF encoder gets Pooling, an
    optional Dense projection and Normalize modules built here."""
    from sentence_transformers import SentenceTransformer

    from jmlr.models import resolve

    src = resolve(name)
    if (Path(src) / "modules.json").is_file() or not Path(src).exists():
        return SentenceTransformer(src, device="cpu")
    try:
        from sentence_transformers.sentence_transformer.modules import Pooling
        from sentence_transformers.base.modules import Dense, Normalize, Transformer
    except ImportError:  # sentence-transformers < 6
        from sentence_transformers.models import Dense, Normalize, Pooling, Transformer
    tr = Transformer(src, max_seq_length=128)
    dim = tr.get_embedding_dimension()
    mods = [tr, Pooling(dim, pooling_mode=pooling)] + ([Dense(dim, dense)] if dense else []) + [Normalize()]
    return SentenceTransformer(modules=mods, device="cpu", prompts={"query": "question: ", "document": "passage: "})


if __name__ == "__main__":
    parser = build_parser(__doc__)
    parser.add_argument("--pooling", default="lasttoken", help="Pooling mode when the model is a plain encoder")
    parser.add_argument("--dense", type=int, default=64, help="Dense projection size for a plain encoder (0 = none)")
    args = parser.parse_args()

    def make_trainer(cfg):
        from jmlr import DualEncoder, JointTrainer
        from jmlr.train.trainer import load_data

        st = sentence_transformer(args.retriever, args.pooling, args.dense)
        dual = DualEncoder.from_sentence_transformer(st)
        print(f"SentenceTransformer: pooling={dual.pooling} dim={dual.dim} normalize={dual.normalize} "
              f"query_prefix={dual.query_prefix!r} doc_prefix={dual.doc_prefix!r}")
        train, dev, _, corpus = load_data(cfg)
        return JointTrainer(cfg, dual, make_reader(cfg), corpus, train, dev, progress=not args.quick)

    out = run(args, [], make_trainer)
    out["trainer"].retriever.save_pretrained(Path(args.out) / "retriever-st")  # loads in SentenceTransformer too
    print(f"saved {Path(args.out) / 'retriever-st'} (a sentence-transformers folder)")
