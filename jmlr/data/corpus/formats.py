"""Corpus file formats: JSONL, TSV, text / markdown files and folders of them, Hugging Face datasets.

Each loader streams a file into a ``_CorpusBuilder``; :meth:`Corpus.load <jmlr.data.corpus.Corpus.load>` turns
that into a corpus. Errors name the file and the line (or record).
"""
from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path
from typing import Any, Iterator, Mapping

from .._io import DataFormatError, iter_jsonl, iter_lines, open_text
from ..hf import arrow_batches, check_columns, column_names, resolve_dataset, string_chunks
from .columns import _CorpusBuilder


def _infer_corpus_format(p: Path) -> str:
    if p.is_dir():
        if (p / "dataset_info.json").is_file() or (p / "dataset_dict.json").is_file():
            return "hf"  # written by datasets' save_to_disk
        return "folder"
    name = p.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    for suf, fmt in ((".jsonl", "jsonl"), (".json", "jsonl"), (".tsv", "tsv"), (".txt", "text"), (".md", "text"),
                     (".markdown", "text")):
        if name.endswith(suf):
            return fmt
    raise ValueError(f"{p}: cannot tell the corpus format from the name; pass fmt= one of jsonl, tsv, text, folder")


def _str_field(path: Path, where: str, rec: Mapping, key: str, required: bool, alt: str | None = None) -> str:
    if key not in rec and alt is not None and alt in rec:
        key = alt
    if key not in rec or rec[key] is None:
        if required:
            raise DataFormatError(path, where, f"missing field {key!r}; expected a passage {{id, title?, text}} "
                                               f"(record has {sorted(rec)})")
        return ""
    v = rec[key]
    if isinstance(v, bool) or not isinstance(v, (str, int)):
        raise DataFormatError(path, where, f"field {key!r} is {type(v).__name__}; expected a string")
    return str(v)


def _load_jsonl(p: Path, id_field: str = "id", text_field: str = "text", title_field: str = "title") -> tuple[_CorpusBuilder, str]:
    b = _CorpusBuilder()
    expected = "one passage object {id, title?, text} per line"
    alt_text = "contents" if text_field == "text" else None  # Pyserini's JSONL name
    for where, rec in iter_jsonl(p, expected):
        pid = _str_field(p, where, rec, id_field, True)
        if not pid:
            raise DataFormatError(p, where, f"empty id; expected a non-empty {id_field!r}")
        text = _str_field(p, where, rec, text_field, True, alt_text)
        title = _str_field(p, where, rec, title_field, False)
        parent = rec.get("parent")
        b.add(pid, text, title, int(where.split()[-1]), parent if isinstance(parent, str) else None)
    return b, "line"


def _load_tsv(p: Path, quoting: bool = True) -> tuple[_CorpusBuilder, str]:
    csv.field_size_limit(2**31 - 1)
    b = _CorpusBuilder()
    with open_text(p) as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_MINIMAL if quoting else csv.QUOTE_NONE)
        line = 1
        try:
            for row in reader:
                where, line = line, reader.line_num + 1
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue
                if len(b) == 0 and row[0].strip().lower() == "id" and len(row) > 1 and row[1].strip().lower() == "text":
                    continue  # header
                if len(row) not in (2, 3):
                    raise DataFormatError(p, f"line {where}", f"{len(row)} tab-separated column(s); "
                                                              "expected id<TAB>text[<TAB>title]")
                if not row[0].strip():
                    raise DataFormatError(p, f"line {where}", "empty id; expected id<TAB>text[<TAB>title]")
                b.add(row[0], row[1], row[2] if len(row) == 3 else "", where)
        except csv.Error as e:
            raise DataFormatError(p, f"line {line}", f"malformed TSV ({e}); expected id<TAB>text[<TAB>title]") from None
        except UnicodeDecodeError as e:
            raise DataFormatError(p, f"near line {line}", f"not valid UTF-8 ({e.reason})") from None
    if len(b) == 0:
        raise DataFormatError(p, None, "file is empty; expected lines id<TAB>text[<TAB>title]")
    return b, "line"


_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_FENCE = re.compile(r"^\s{0,3}(```|~~~)")


def _paragraphs(p: Path, markdown: bool) -> Iterator[tuple[int, str, str]]:
    """``(first line, title, paragraph)`` for each blank-line-separated paragraph of a text file."""
    title = ""
    buf: list[str] = []
    start = 0
    in_fence = False
    for lineno, line in iter_lines(p):
        if markdown and _FENCE.match(line):
            in_fence = not in_fence
        if markdown and not in_fence:
            m = _HEADING.match(line)
            if m:
                if buf:
                    yield start, title, "\n".join(buf).strip()
                    buf = []
                title = m.group(2).strip()
                continue
        if not line.strip() and not in_fence:
            if buf:
                yield start, title, "\n".join(buf).strip()
                buf = []
            continue
        if not buf:
            start = lineno
        buf.append(line)
    if buf:
        yield start, title, "\n".join(buf).strip()


def _add_text_file(b: _CorpusBuilder, p: Path, rel: str, default_title: str) -> int:
    md = p.suffix.lower() in (".md", ".markdown")
    k = 0
    for lineno, title, para in _paragraphs(p, md):
        if not para:
            continue
        b.add(f"{rel}:{k}", para, title or default_title, lineno)
        k += 1
    return k


def _load_text(p: Path) -> tuple[_CorpusBuilder, str]:
    b = _CorpusBuilder()
    if _add_text_file(b, p, p.name, "") == 0:
        raise DataFormatError(p, None, "file is empty; expected paragraphs separated by blank lines")
    return b, "line"


_TEXT_SUFFIXES = (".md", ".markdown", ".txt")


def _load_folder(p: Path) -> tuple[_CorpusBuilder, str]:
    files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in _TEXT_SUFFIXES)
    if not files:
        raise DataFormatError(p, None, "folder holds no .md/.markdown/.txt files; expected text documents")
    b = _CorpusBuilder()
    for f in files:
        rel = f.relative_to(p).as_posix()
        md = f.suffix.lower() in (".md", ".markdown")
        _add_text_file(b, f, rel, f.stem if not md else f.stem)
    if len(b) == 0:
        raise DataFormatError(p, None, f"all {len(files)} text files are empty; expected paragraphs of text")
    return b, "passage"


LOADERS = {"jsonl": _load_jsonl, "tsv": _load_tsv, "text": _load_text, "txt": _load_text, "md": _load_text,
           "markdown": _load_text, "folder": _load_folder}


def check_corpus_path(path: str | os.PathLike, fmt: str | None) -> tuple[Path, str]:
    """``(path, format)`` after checking that the path exists and fits the format (inferred when None)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file or folder (expected a corpus: JSONL, TSV, text or a folder)")
    fmt = _infer_corpus_format(p) if fmt is None else fmt.lower()
    if fmt not in LOADERS and fmt != "hf":
        raise ValueError(f"unknown corpus format {fmt!r}; expected one of: jsonl, tsv, text, folder, hf")
    if fmt == "folder" and not p.is_dir():
        raise DataFormatError(p, None, "is not a folder; expected a folder of .md/.txt files")
    if fmt != "folder" and fmt != "hf" and p.is_dir():
        raise DataFormatError(p, None, f"is a folder; format {fmt!r} expects a file (use fmt='folder')")
    return p, fmt


def read_hf(dataset: Any, id: str | None, text: str, title: str | None, split: str | None,
            batch_size: int) -> tuple[_CorpusBuilder, str, int]:
    """Stream a Hugging Face dataset's id / text / title columns (Arrow batches) into a builder:
    ``(builder, description, rows)``; see :meth:`Corpus.from_hf <jmlr.data.corpus.Corpus.from_hf>`."""
    ds, desc = resolve_dataset(dataset, split)
    cols = column_names(ds)
    if title == "title" and cols and "title" not in cols:
        title = None  # the default title column is optional
    check_columns(ds, desc, {"id": id, "text": text, "title": title})
    b = _CorpusBuilder()
    want = [c for c in (id, text, title) if c is not None]
    n = 0
    for table in arrow_batches(ds, want, batch_size):
        rows = table.num_rows
        if id is None:
            for j in range(n, n + rows):
                b.ids.append(str(j))
        else:
            ids = string_chunks(table, id, desc, "id", n)
            import pyarrow.compute as pc

            for chunk in ids:
                empty = pc.equal(pc.binary_length(chunk), 0)
                if pc.any(empty).as_py():
                    first = int(pc.index(empty, True).as_py())
                    raise DataFormatError(None, f"{desc}, record {n + first}", f"column {id!r} (id) is empty; "
                                                                               "expected a non-empty id")
                b.ids.extend_arrow(chunk)
        for chunk in string_chunks(table, text, desc, "text", n):
            b.texts.extend_arrow(chunk)
        if title is not None:
            for chunk in string_chunks(table, title, desc, "title", n, required=False):
                b.titles.extend_arrow(chunk)
        else:
            b.titles.off.extend([len(b.titles.buf)] * rows)
        n += rows
    if n == 0:
        raise DataFormatError(None, desc, "dataset is empty; expected passages")
    return b, desc, n


def jsonl_lines(corpus) -> Iterator[str]:
    """The ``{id, title?, text, parent?}`` JSON lines of a corpus, as ``Corpus.save_jsonl`` writes them."""
    titles = corpus._title_col()
    pcol, pidx = corpus._parent_view()
    chunked = corpus._parents is not None

    def lines() -> Iterator[str]:
        for i, (pid, title, text) in enumerate(zip(corpus._ids, titles, corpus._texts)):
            d: dict[str, str] = {"id": pid}
            if title:
                d["title"] = title
            d["text"] = text
            if chunked:
                parent = pcol[int(pidx[i])]
                if parent != pid:
                    d["parent"] = parent
            yield json.dumps(d, ensure_ascii=False)

    return lines()
