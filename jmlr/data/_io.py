"""Reading helpers shared by the QA loaders and the corpus loaders.

Every error raised here is a :class:`DataFormatError` (a ``ValueError``) whose message starts with
the file and the line or record, then says what was expected.
"""
from __future__ import annotations

import gzip
import io
import json
import os
from pathlib import Path
from typing import Any, Iterator

from jmlr.core.fs import atomic_file


class DataFormatError(ValueError):
    """Bad input data. ``path`` and ``where`` (e.g. ``"line 12"``) locate the problem."""

    def __init__(self, path: str | os.PathLike | None, where: str | None, message: str):
        self.path = None if path is None else str(path)
        self.where = where
        self.reason = message
        loc = ", ".join(p for p in (self.path, where) if p)
        super().__init__(f"{loc}: {message}" if loc else message)


def check_file(path: str | os.PathLike, what: str = "a file") -> Path:
    """Return ``path`` as a Path; raise ``FileNotFoundError`` / ``ValueError`` if it is not a file."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file (expected {what})")
    if p.is_dir():
        raise DataFormatError(p, None, f"is a folder; expected {what}")
    return p


def open_text(path: str | os.PathLike) -> io.TextIOBase:
    """Open a UTF-8 text file (``.gz`` transparently), dropping a leading BOM."""
    p = check_file(path)
    if p.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(p, "rb"), encoding="utf-8-sig", newline="")
    return open(p, encoding="utf-8-sig", newline="")


def open_binary(path: str | os.PathLike):
    """Open a file for reading bytes (``.gz`` transparently)."""
    p = check_file(path)
    return gzip.open(p, "rb") if p.suffix == ".gz" else open(p, "rb")


def _first_char(path: Path) -> str:
    """The first non-whitespace character of a file ('' when the file is empty or blank); ASCII is enough."""
    with open_binary(path) as f:
        first = True
        while True:
            chunk = f.read(4096)
            if not chunk:
                return ""
            if first and chunk.startswith(b"\xef\xbb\xbf"):
                chunk = chunk[3:]
            first = False
            s = chunk.lstrip()
            if s:
                return chr(s[0]) if s[0] < 128 else "?"


def iter_lines(path: str | os.PathLike) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, line)`` (1-based, newline stripped); invalid UTF-8 names its exact line."""
    p = Path(path)
    with open_binary(p) as f:
        for lineno, raw in enumerate(f, 1):
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataFormatError(p, f"line {lineno}", f"not valid UTF-8 (byte {e.start + 1}: {e.reason}); "
                                                           "expected UTF-8 text") from None
            yield lineno, line.rstrip("\r\n")


def iter_jsonl(path: str | os.PathLike, expected: str = "one JSON object per line") -> Iterator[tuple[str, dict]]:
    """Yield ``("line N", object)`` for each non-blank line of a JSONL file.

    Raises :class:`DataFormatError` naming the file and line on malformed JSON or a non-object line,
    and on a file with no records at all.
    """
    p = Path(path)
    n = 0
    for lineno, line in iter_lines(p):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataFormatError(p, f"line {lineno}",
                                  f"malformed JSON ({e.msg} at column {e.colno}); expected {expected}") from None
        if not isinstance(obj, dict):
            raise DataFormatError(p, f"line {lineno}", f"got a JSON {type(obj).__name__}; expected {expected}")
        n += 1
        yield f"line {lineno}", obj
    if n == 0:
        raise DataFormatError(p, None, f"file is empty; expected {expected}")


def read_json(path: str | os.PathLike, expected: str) -> Any:
    """Parse a whole JSON file; malformed JSON names the line and column."""
    p = check_file(path)
    with open_text(p) as f:
        try:
            text = f.read()
        except UnicodeDecodeError as e:
            raise DataFormatError(p, None, f"not valid UTF-8 ({e.reason}); expected UTF-8 text") from None
    if not text.strip():
        raise DataFormatError(p, None, f"file is empty; expected {expected}")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataFormatError(p, f"line {e.lineno}", f"malformed JSON ({e.msg} at column {e.colno}); expected {expected}") from None


def iter_records(path: str | os.PathLike, expected: str = "one JSON object per line") -> Iterator[tuple[str, dict]]:
    """Records of a JSONL file, or of a JSON file holding one array of objects.

    Many data sets ship JSONL under a ``.json`` name (MedMCQA) and others a JSON array; the first
    non-blank character decides. Yields ``(where, record)`` with ``where`` = ``"line N"`` or ``"record N"``.
    """
    p = check_file(path)
    first = _first_char(p)
    if first == "":
        raise DataFormatError(p, None, f"file is empty; expected {expected}")
    if first == "[":
        data = read_json(p, "a JSON array of objects")
        if not data:
            raise DataFormatError(p, None, f"JSON array is empty; expected {expected}")
        for i, obj in enumerate(data):
            if not isinstance(obj, dict):
                raise DataFormatError(p, f"record {i}", f"got a JSON {type(obj).__name__}; expected a JSON object")
            yield f"record {i}", obj
        return
    yield from iter_jsonl(p, expected)


def atomic_write_lines(path: str | os.PathLike, lines: Iterator[str]) -> Path:
    """Write text lines to ``path`` (gzip for ``.gz``) through :func:`jmlr.core.fs.atomic_file` (fsync, rename)."""
    p = Path(path)
    with atomic_file(p) as tmp:
        opener = (lambda: io.TextIOWrapper(gzip.open(tmp, "wb"), encoding="utf-8")) if p.suffix == ".gz" else \
            (lambda: open(tmp, "w", encoding="utf-8", newline="\n"))
        with opener() as f:
            for line in lines:
                f.write(line)
                f.write("\n")
    return p
