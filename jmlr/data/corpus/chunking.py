"""Chunking of long passages into windows of characters or tokens (with a Hugging Face tokenizer)."""
from __future__ import annotations

from array import array
from typing import Any

from tqdm.auto import tqdm

from .columns import _CorpusBuilder


def _char_windows(text: str, size: int, overlap: int) -> list[tuple[int, int]]:
    """``(start, end)`` windows of at most ``size`` characters, preferring to end at whitespace."""
    n = len(text)
    if n <= size:
        return [(0, n)]
    out: list[tuple[int, int]] = []
    start = 0
    while start < n:
        while start < n and text[start].isspace():
            start += 1
        if start >= n:
            break
        end = start + size
        if end >= n:
            end = n
        else:
            lo = start + size // 2
            cut = max(text.rfind(" ", lo, end + 1), text.rfind("\n", lo, end + 1), text.rfind("\t", lo, end + 1))
            if cut > start:
                end = cut
        e2 = end
        while e2 > start and text[e2 - 1].isspace():
            e2 -= 1
        out.append((start, e2))
        if end >= n:
            break
        nxt = end - overlap
        if overlap > 0:  # start the overlap at a word boundary
            k = nxt
            while k < end and k > 0 and not text[k - 1].isspace():
                k += 1
            if k < end:
                nxt = k
        start = max(nxt, start + 1)
    return out


def _token_windows(tokenizer: Any, texts: list[str], size: int, overlap: int) -> list[list[str]]:
    """Token windows per text: slices of the original text (fast tokenizers) or decoded tokens (slow ones)."""
    fast = bool(getattr(tokenizer, "is_fast", False))
    kwargs: dict[str, Any] = {"add_special_tokens": False, "return_attention_mask": False, "verbose": False}
    if fast:
        kwargs["return_offsets_mapping"] = True
    enc = tokenizer(texts, **kwargs)
    step = size - overlap
    out: list[list[str]] = []
    for k, text in enumerate(texts):
        ids = enc["input_ids"][k]
        m = len(ids)
        if m <= size:
            out.append([text])
            continue
        offs = enc["offset_mapping"][k] if fast else None
        chunks = []
        for s in range(0, m, step):
            e = min(s + size, m)
            if fast:
                piece = text[offs[s][0]: offs[e - 1][1]].strip()
            else:
                piece = tokenizer.decode(ids[s:e], skip_special_tokens=True).strip()
            if piece:
                chunks.append(piece)
            if e >= m:
                break
        out.append(chunks or [text])
    return out


def chunk_passages(corpus, size: int, overlap: int = 0, *, tokenizer: Any = None, unit: str | None = None,
                   batch_size: int = 512, progress: bool | None = None):
    """The windows of :meth:`Corpus.chunk <jmlr.data.corpus.Corpus.chunk>` as ``(builder, sources)``:
    a ``_CorpusBuilder`` of the chunks and, per chunk, the index of its passage in ``corpus``'s parent column."""
    unit = unit or ("tokens" if tokenizer is not None else "chars")
    if unit not in ("tokens", "chars"):
        raise ValueError(f"unit must be 'tokens' or 'chars', got {unit!r}")
    if unit == "tokens" and tokenizer is None:
        raise ValueError("unit='tokens' needs a tokenizer (any Hugging Face tokenizer)")
    if not isinstance(size, int) or size <= 0:
        raise ValueError(f"size must be a positive int, got {size!r}")
    if not isinstance(overlap, int) or not 0 <= overlap < size:
        raise ValueError(f"overlap must be an int with 0 <= overlap < size ({size}), got {overlap!r}")
    b = _CorpusBuilder()
    src = array("q")  # per chunk: index into pcol of the passage it came from
    pcol, pidx = corpus._parent_view()
    titles = corpus._title_col()
    n = len(corpus)
    show = n > 20_000 if progress is None else progress
    bar = tqdm(total=n, desc=f"chunk ({unit})", disable=not show, unit="psg")
    for s in range(0, n, batch_size):
        e = min(s + batch_size, n)
        texts = [corpus._texts[i] for i in range(s, e)]
        if unit == "chars":
            pieces = [[text[a:b2] for a, b2 in _char_windows(text, size, overlap)] for text in texts]
        else:
            pieces = _token_windows(tokenizer, texts, size, overlap)
        for k, chunks in enumerate(pieces):
            i = s + k
            pid, title, parent = corpus._ids[i], titles[i], int(pidx[i])
            if len(chunks) <= 1:
                b.add(pid, texts[k] if not chunks else chunks[0], title, i)
                src.append(parent)
            else:
                for j, ch in enumerate(chunks):
                    b.add(f"{pid}#{j}", ch, title, i)
                    src.append(parent)
        bar.update(e - s)
    bar.close()
    return b, src
