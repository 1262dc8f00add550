"""Feature: faiss in. Train against any faiss index_factory string (here HNSW with efSearch set through
index.params), and adopt a faiss index you already have with FaissIndex.from_faiss (`jmlr index import` on the
command line).

    python examples/by_feature/faiss_index.py --quick
    python examples/by_feature/faiss_index.py index.type=IVF1024,PQ32x4fs 'index.params={"nprobe": 32}'
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from train_medqa import build_parser, run  # noqa: E402


def adopt_existing_index(retriever, corpus):
    """A faiss index built elsewhere (here, by hand), adopted with its ids and checked against the encoder."""
    import faiss

    from jmlr.index import FaissIndex

    raw = faiss.IndexHNSWFlat(retriever.dim, 16, faiss.METRIC_INNER_PRODUCT)
    raw.add(retriever.encode_docs(corpus.texts(), progress=False).numpy())
    index = FaissIndex.from_faiss(raw, list(corpus.ids), encoder=retriever)
    _, ids = index.search(retriever.encode_queries([corpus[0].text], progress=False), 3)
    print(f"adopted {index!r}; top hit for passage 0's text: {ids[0][0]}")
    return index


if __name__ == "__main__":
    args = build_parser(__doc__).parse_args()
    out = run(args, ["index.type=HNSW16,Flat", 'index.params={"efSearch": 64}'])
    trainer = out["trainer"]
    served = trainer.retrieval.refresher.index
    print(f"trained against {served.factory} with search params {served.search_params}")
    adopt_existing_index(trainer.retriever, trainer.corpus)
