"""Real medical passages for the scale benchmarks, read in place from ``../shared/data`` (never copied).

MedMCQA explanations (``medmcqa/dev.json``, ``exp``), PubMedQA PQA-L context sections (``pubmedqa/ori_pqal.json``)
and the bundled demo corpus, chunked into character windows, so that a passage is about one retrieval unit.
When ``../shared/data`` is absent only the demo corpus remains (callers decide whether that is enough).
"""
from __future__ import annotations

from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def real_passages(data: Path | str = DATA, *, chunk_chars: int = 400, overlap: int = 100,
                  include_demo: bool = True, limit: int | None = None) -> tuple[list[str], dict]:
    """``(texts, info)``: the chunked real passages found, and where they came from (counts per source)."""
    from jmlr.data import load_qa_corpus

    data = Path(data)
    parts, info = [], {"data": str(data), "data_found": data.is_dir(), "sources": {}}
    if data.is_dir():
        for fmt, rel in (("medmcqa", "medmcqa/dev.json"), ("pubmedqa", "pubmedqa/ori_pqal.json")):
            if (data / rel).is_file():
                c = load_qa_corpus(fmt, data / rel)
                parts.append(c)
                info["sources"][rel] = len(c)
    if include_demo:
        from jmlr.data import demo_corpus

        c = demo_corpus()
        parts.append(c)
        info["sources"]["demo_corpus"] = len(c)
    texts = []
    for c in parts:  # chunked one source at a time (ids may repeat across sources; only the texts are used)
        texts += c.chunk(chunk_chars, overlap, unit="chars", progress=False).texts()
    info.update(passages=sum(len(c) for c in parts), chunks=len(texts), chunk_chars=chunk_chars,
                overlap_chars=overlap)
    if limit is not None and limit < len(texts):  # a sample of every source, not the first one's head
        import random

        texts = random.Random(0).sample(texts, limit)
    return texts, info
