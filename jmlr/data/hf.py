"""Hugging Face ``datasets`` in: data sets as corpora, QA, and stage data, without per-row Python copies.

A ``datasets.Dataset`` (or ``IterableDataset``, a ``DatasetDict`` with ``split=``, or a folder written by
``save_to_disk``) is read in Arrow record batches: string columns go from Arrow's UTF-8 buffers straight
into jmlr's compact corpus store (:meth:`jmlr.data.Corpus.from_hf`). Nothing is downloaded; load hub data
sets yourself with ``datasets.load_dataset`` first.

Field mappings name the column each jmlr field comes from, ``{"id": "pmid", "text": "abstract"}``; on the
command line ``--hf-mapping id=pmid --hf-mapping text=abstract`` (:func:`parse_mapping`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

CORPUS_FIELDS = ("id", "text", "title")
_BATCH = 16384


def is_hf_dataset(obj: Any) -> bool:
    """True for ``datasets.Dataset`` / ``IterableDataset`` / their ``*Dict`` (checked without importing datasets)."""
    names = {k.__name__ for k in type(obj).__mro__}
    return bool(names & {"Dataset", "IterableDataset", "DatasetDict", "IterableDatasetDict"}) and \
        type(obj).__module__.startswith("datasets")


def load_if_folder(src: Any, missing: type[Exception] = FileNotFoundError,
                   hint: str = "expected a folder with dataset_info.json, or pass a datasets.Dataset object"
                   ) -> tuple[Any, str]:
    """``(data set, description)``: a path is a folder written by ``save_to_disk`` and is loaded (nothing is
    downloaded); anything else comes back as it is. A path that is not a folder raises ``missing`` with ``hint``."""
    if not isinstance(src, (str, os.PathLike)):
        return src, "hf dataset"
    p = Path(src)
    if not p.is_dir():
        raise missing(f"{p}: not a folder written by datasets' save_to_disk ({hint})")
    import datasets

    return datasets.load_from_disk(str(p)), f"hf dataset {p}"


def resolve_dataset(src: Any, split: str | None = None) -> tuple[Any, str]:
    """``(dataset, description)`` from a Dataset, a DatasetDict (+ ``split``) or a ``save_to_disk`` folder."""
    src, desc = load_if_folder(src)
    if not is_hf_dataset(src):
        raise ValueError(f"expected a datasets.Dataset (or DatasetDict, or a save_to_disk folder), "
                         f"got {type(src).__name__}")
    return select_split(src, split, desc)


def is_split_dict(obj: Any) -> bool:
    """A mapping of split name to data set: a (Iterable)DatasetDict, or a plain dict of splits."""
    if any(k.__name__ in ("DatasetDict", "IterableDatasetDict") for k in type(obj).__mro__):
        return True
    return (isinstance(obj, Mapping) or hasattr(obj, "keys")) and not hasattr(obj, "column_names")


def select_split(src: Any, split: str | None, desc: str) -> tuple[Any, str]:
    """``(one split, description)`` of a mapping of splits (:func:`is_split_dict`): the one named ``split``, or
    the only one when ``split`` is None; any other source comes back as it is. ``desc`` names the source in
    errors, and gets the split appended."""
    if is_split_dict(src):
        splits = list(src.keys())
        if split is None:
            if len(splits) != 1:
                raise ValueError(f"{desc}: a DatasetDict with splits {splits}; pass split=<one of them>")
            split = splits[0]
        if split not in src:
            raise ValueError(f"{desc}: no split {split!r}; expected one of {splits}")
        src = src[split]
        desc = f"{desc} (split {split!r})"
    elif split is not None:
        desc = f"{desc} (split {split!r})"
    return src, desc


def column_names(ds) -> list[str]:
    cols = getattr(ds, "column_names", None)
    if cols is None and getattr(ds, "features", None) is not None:
        cols = list(ds.features)
    return list(cols or [])


def check_columns(ds, desc: str, wanted: Mapping[str, str | None]) -> None:
    """Raise ``ValueError`` naming the field, the column and the columns present when one is missing."""
    cols = column_names(ds)
    if not cols:  # an IterableDataset without features: checked on the first batch instead
        return
    for field, col in wanted.items():
        if col is not None and col not in cols:
            raise ValueError(f"{desc}: no column {col!r} for field {field!r}; the dataset has columns {cols} "
                             f"(map the field with {field}=<column>)")


def arrow_batches(ds, columns: Sequence[str], batch_size: int = _BATCH) -> Iterator[Any]:
    """``pyarrow.Table`` batches of ``columns`` (select / shuffle / filter indices respected)."""
    import pyarrow as pa

    cols = list(dict.fromkeys(columns))
    try:
        view = ds.select_columns(cols) if hasattr(ds, "select_columns") else ds
        it = view.with_format("arrow").iter(batch_size=batch_size)
    except (AttributeError, TypeError, NotImplementedError):  # very old datasets: dict batches
        it = (pa.table({c: b[c] for c in cols}) for b in ds.iter(batch_size=batch_size))
    for batch in it:
        if isinstance(batch, pa.RecordBatch):
            batch = pa.Table.from_batches([batch])
        elif isinstance(batch, Mapping):
            batch = pa.table({c: batch[c] for c in cols})
        yield batch


def string_chunks(table, column: str, desc: str, field: str, start: int, *, required: bool = True) -> list:
    """The column as ``pyarrow.LargeStringArray`` chunks; nulls are errors (``required``) or ``""``; numbers are cast."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if column not in table.column_names:
        raise ValueError(f"{desc}: no column {column!r} for field {field!r}; the dataset has columns "
                         f"{table.column_names}")
    col = table.column(column)
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type) or pa.types.is_integer(col.type)):
        raise ValueError(f"{desc}: column {column!r} (field {field!r}) holds {col.type}; expected strings")
    if col.null_count:
        if required:
            first = int(pc.index(pc.is_null(col), True).as_py())
            raise ValueError(f"{desc}, record {start + first}: column {column!r} (field {field!r}) is null; "
                             "expected a string")
        col = pc.fill_null(col, "")
    col = pc.cast(col, pa.large_string())
    return list(col.chunks)


def parse_mapping(items: Sequence[str], flag: str = "--hf-mapping") -> dict[str, Any]:
    """``["id=pmid", "options=opa,opb,opc"]`` -> ``{"id": "pmid", "options": ["opa", "opb", "opc"]}``."""
    out: dict[str, Any] = {}
    for item in items:
        field, sep, col = str(item).partition("=")
        field, col = field.strip(), col.strip()
        if not sep or not field or not col:
            raise ValueError(f"{flag} {item!r}: expected FIELD=COLUMN, e.g. text=abstract")
        out[field] = [c.strip() for c in col.split(",")] if "," in col else col
    return out


def corpus_load_kwargs(fmt: str | None, mapping: Mapping[str, Any], where: str = "") -> dict[str, str]:
    """Keyword arguments of :meth:`Corpus.load` for a field mapping: ``id=/text=/title=`` for ``hf``,
    ``id_field=/text_field=/title_field=`` for ``jsonl``."""
    bad = [k for k in mapping if k not in CORPUS_FIELDS]
    if bad:
        raise ValueError(f"corpus mapping: unknown field(s) {bad}; expected some of {CORPUS_FIELDS}")
    for k, v in mapping.items():
        if not isinstance(v, str):
            raise ValueError(f"corpus mapping: field {k!r} maps to {v!r}; expected one column name")
    fmt = (fmt or "").lower()
    if not fmt and where:
        fmt = "hf" if Path(where).is_dir() and (Path(where) / "dataset_info.json").is_file() or \
            (Path(where) / "dataset_dict.json").is_file() else ""
    if fmt == "hf":
        return dict(mapping)
    if fmt in ("jsonl", "") and not (where and Path(where).is_dir()):
        return {f"{k}_field": v for k, v in mapping.items()}
    raise ValueError(f"a corpus field mapping applies to hf and jsonl corpora, not to format {fmt or 'folder'!r}")


def text_column(ds, column: str = "text") -> list[str]:
    """One string column of a dataset as a list (for the pretraining stage, which packs texts)."""
    ds, desc = resolve_dataset(ds)
    check_columns(ds, desc, {"text": column})
    out: list[str] = []
    start = 0
    for table in arrow_batches(ds, [column]):
        for chunk in string_chunks(table, column, desc, "text", start):
            out.extend(chunk.to_pylist())
        start += table.num_rows
    return out


def records(ds, fields: Mapping[str, str], optional: Sequence[str] = ()) -> Iterator[tuple[str, dict]]:
    """``("record i", {field: value})`` over a dataset, columns renamed by ``fields`` (field -> column);
    ``optional`` fields may be absent from the dataset."""
    ds, desc = resolve_dataset(ds)
    cols = column_names(ds)
    use = {f: c for f, c in fields.items() if not (f in optional and cols and c not in cols)}
    check_columns(ds, desc, use)
    i = 0
    for table in arrow_batches(ds, list(use.values())):
        rows = table.select([c for c in dict.fromkeys(use.values())]).to_pylist()
        for row in rows:
            yield f"{desc}, record {i}", {f: row.get(c) for f, c in use.items()}
            i += 1
