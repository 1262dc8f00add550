"""Continued pretraining on medical text, in packed token windows (PMC-LLaMA / Meditron's first stage).

Texts (corpus passages, and optionally QA pairs written out as text, e.g. Huatuo-26M) are tokenized without
special tokens, joined with an EOS separator, and the resulting stream is cut into windows of exactly
``window`` tokens::

    stream:  [t1 t1 t1 EOS t2 t2 t2 t2 t2 EOS t3 t3 EOS t4 ...]
    windows: [t1 t1 t1 EOS t2 t2 t2 t2] [t2 EOS t3 t3 EOS t4 ...] ...

No padding is spent: every token of every text appears exactly once (only the tail of the stream, shorter
than a window, forms one shorter window at the very end of a finite pass). The loss is the next-token loss.

``data.packing`` decides what a token sees:

* ``document`` (the default): positions restart at 0 with every document (and with the piece of a document
  that continues from the previous window), attention stays inside the document, and the first token of a
  document is not predicted from the one before it. A token's logits are then exactly those of its document
  alone (tested), as in Llama 3's document masking, trl's packing and transformers'
  ``DataCollatorWithFlattening``. The model gets ``position_ids`` and no 2-D mask: transformers builds the
  block-causal mask from the position restarts (SDPA / eager on CPU), and flash-attention kernels run
  variable-length attention from them on GPU. Older transformers without that detection get an explicit
  4-D block mask (:func:`document_attention`).
* ``stream``: GPT-style: attention crosses the EOS separators inside a window; the EOS token tells the model
  where a document ends.

Python::

    from jmlr.train.stages import PretrainConfig, run_pretrain
    cfg = PretrainConfig(output_dir="runs/cpt")
    cfg.data.corpus = "corpus.jsonl"; cfg.optim.steps = 200
    summary = run_pretrain(cfg)          # model in runs/cpt/model, logs in runs/cpt/metrics.jsonl

CLI: ``jmlr pretrain --config configs/stages/pretrain.yaml optim.steps=200``.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from jmlr.core.fields import config_field as _f
from jmlr.data.hf import is_hf_dataset, text_column as hf_text_column
from jmlr.reader.prefix import unwrap_peft

from .batching import IGNORE_INDEX, StepBatch, StreamBatches, sequence_logps
from .config import StageModelConfig, StageOptimConfig, StageRunConfig, save_stage_config
from .data_io import load_reader, resolve_corpus, resolve_qa, seed_everything
from .engine import StageRun, holds_run_folder, train_loop

__all__ = ["PretrainConfig", "PretrainDataConfig", "pack_windows", "pack_documents", "PackedStream", "qa_to_text",
           "pretrain_texts", "document_attention", "run_pretrain", "pretrain", "PACKINGS"]

PACKINGS = ("document", "stream")


@dataclass
class PretrainDataConfig:
    """Where the pretraining text comes from."""

    corpus: str = _f("demo", "corpus file/folder (JSONL, TSV, text, markdown folder), 'demo', or '' for none")
    corpus_format: str = _f("", "corpus format; inferred from the extension when empty")
    with_title: bool = _f(True, "prepend the passage title ('title. text')")
    qa: str = _f("", "QA file whose question/answer pairs are ALSO used as text (e.g. Huatuo-26M), '' for none")
    qa_format: str = _f("huatuo", "format of data.qa (see jmlr.data.load_qa): huatuo, jmlr, medqa, ...")
    window: int = _f(512, "tokens per packed training window")
    separator: str = _f("", "token placed between texts; '' = the tokenizer's EOS token")
    shuffle: bool = _f(True, "shuffle the text order every epoch")
    tokenize_chunk: int = _f(256, "texts tokenized per call while streaming")
    packing: str = _f("document", "document: positions restart and attention stays inside each document; "
                                  "stream: GPT-style, attention crosses the EOS separators")


@dataclass
class PretrainConfig(StageRunConfig):
    """``jmlr pretrain``: continued pretraining in packed windows."""

    output_dir: str = _f("runs/pretrain", "run folder: metrics.jsonl, summary.json, config.yaml, model/, "
                                          "checkpoints/")
    model: StageModelConfig = field(default_factory=StageModelConfig, metadata={"help": "the reader to train"})
    data: PretrainDataConfig = field(default_factory=PretrainDataConfig, metadata={"help": "text sources"})
    optim: StageOptimConfig = field(default_factory=lambda: StageOptimConfig(lr=5e-5, warmup_steps=10),
                                    metadata={"help": "optimisation"})


# ------------------------------------------------------------------------------------------ packing
def pack_windows(token_lists: Iterable[Sequence[int]], window: int, sep_id: int,
                 drop_last: bool = False) -> Iterator[list[int]]:
    """Concatenate token lists, each followed by ``sep_id``, and cut the stream into ``window``-token windows.

    Every window has exactly ``window`` tokens, except the final one when ``drop_last`` is False and the
    stream's length is not a multiple of ``window`` (it is then shorter; nothing is padded, nothing lost).

    >>> list(pack_windows([[1, 2, 3], [4, 5], [6]], window=4, sep_id=0))
    [[1, 2, 3, 0], [4, 5, 0, 6], [0]]
    """
    if window < 2:
        raise ValueError(f"window must be at least 2 tokens, got {window}")
    buf: list[int] = []
    for toks in token_lists:
        buf.extend(toks)
        buf.append(sep_id)
        while len(buf) >= window:
            yield buf[:window]
            del buf[:window]
    if buf and not drop_last:
        yield buf


def pack_documents(token_lists: Iterable[Sequence[int]], window: int, sep_id: int,
                   drop_last: bool = False) -> Iterator[tuple[list[int], list[int]]]:
    """:func:`pack_windows` plus the ``position_ids`` of every window: they restart at 0 where a document (its
    tokens and its separator) starts, and at the start of every window (a document cut by a window boundary
    continues as a new piece).

    >>> list(pack_documents([[1, 2, 3], [4, 5], [6]], window=4, sep_id=0))
    [([1, 2, 3, 0], [0, 1, 2, 3]), ([4, 5, 0, 6], [0, 1, 2, 0]), ([0], [0])]
    """
    if window < 2:
        raise ValueError(f"window must be at least 2 tokens, got {window}")
    buf: list[int] = []
    pos: list[int] = []
    for toks in token_lists:
        doc = list(toks) + [sep_id]
        while doc:
            take = doc[: window - len(buf)]
            buf.extend(take)
            pos.extend(range(len(take)))  # a document, or the piece of one a window boundary cut off, starts at 0
            doc = doc[len(take):]
            if len(buf) == window:
                yield buf, pos
                buf, pos = [], []
    if buf and not drop_last:
        yield buf, pos


def document_attention(model, position_ids, mode: str = "auto") -> dict:
    """Keyword arguments that keep attention inside each packed document of ``position_ids (B, L)``.

    ``mode="auto"``: ``{"position_ids", "attention_mask": None}`` when transformers derives the block-causal mask
    from restarting positions itself (``masking_utils.find_packed_sequence_indices``) or the model runs
    flash attention (variable-length kernels); otherwise, and with ``mode="mask"``, an explicit 4-D block-causal
    mask ``(B, 1, L, L)``: boolean for SDPA, additive float for eager attention.
    """
    import torch

    if mode not in ("auto", "mask"):
        raise ValueError(f"mode must be 'auto' or 'mask', got {mode!r}")
    lm = unwrap_peft(model)
    impl = str(getattr(getattr(lm, "config", None), "_attn_implementation", "eager") or "eager")
    if mode == "auto":
        if impl.startswith("flash_attention"):
            return {"position_ids": position_ids, "attention_mask": None}
        try:
            from transformers.masking_utils import find_packed_sequence_indices  # noqa: F401
            return {"position_ids": position_ids, "attention_mask": None}
        except ImportError:  # pragma: no cover - transformers < 4.56
            pass
    doc = (position_ids == 0).cumsum(-1)  # (B, L): document number of every token
    L = position_ids.shape[-1]
    causal = torch.ones(L, L, dtype=torch.bool, device=position_ids.device).tril()
    allowed = (doc.unsqueeze(-1) == doc.unsqueeze(-2)) & causal  # (B, L, L)
    mask = allowed.unsqueeze(1)  # (B, 1, L, L)
    if impl == "eager":
        dtype = next(lm.parameters()).dtype
        mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
    return {"position_ids": position_ids, "attention_mask": mask}


def qa_to_text(ex: Any) -> str:
    """A QA example written as pretraining text: ``Question: ...`` (options listed) then ``Answer: ...``."""
    lines = [f"Question: {ex.question.strip()}"]
    options = getattr(ex, "options", None) or {}
    lines += [f"{k}. {v}" for k, v in options.items()]
    answer = getattr(ex, "answer", None)
    if answer is not None and options:
        lines.append(f"Answer: {answer}. {options[answer]}")
    elif getattr(ex, "answer_text", None):
        lines.append(f"Answer: {ex.answer_text.strip()}")
    else:
        raise ValueError(f"example {getattr(ex, 'id', '?')!r} has no answer to write as pretraining text")
    return "\n".join(lines)


def pretrain_texts(cfg: PretrainDataConfig) -> list[str]:
    """The texts named by ``cfg``: corpus passages, then QA pairs written by :func:`qa_to_text`."""
    texts: list[str] = []
    if cfg.corpus:
        corpus = resolve_corpus(cfg.corpus, cfg.corpus_format or None)
        texts += [t for t in corpus.texts(with_title=cfg.with_title) if t.strip()]
    if cfg.qa:
        texts += [qa_to_text(ex) for ex in resolve_qa(cfg.qa, cfg.qa_format)]
    if not texts:
        raise ValueError("pretraining needs text: set data.corpus and/or data.qa (both are empty or hold no text)")
    return texts


class PackedStream:
    """Endless packed windows over ``texts``: tokenized lazily in chunks, reshuffled every epoch.

    The stream is continuous across epochs (the last window of an epoch continues into the next epoch's
    first text), so it never pads. ``epoch`` is the fractional number of passes over the texts so far.
    """

    def __init__(self, texts: Sequence[str], tokenizer, window: int, sep_id: int, seed: int = 0,
                 shuffle: bool = True, chunk: int = 256):
        if window < 2:
            raise ValueError(f"data.window must be at least 2 tokens, got {window}")
        if not texts:
            raise ValueError("no texts to pack")
        self.texts, self.tok, self.window, self.sep_id = list(texts), tokenizer, int(window), int(sep_id)
        self.seed, self.shuffle, self.chunk = seed, shuffle, max(int(chunk), 1)
        self.epoch = 0.0

    def _token_lists(self) -> Iterator[list[int]]:
        import numpy as np

        n, e = len(self.texts), 0
        while True:
            order = np.random.default_rng(self.seed + e).permutation(n) if self.shuffle else np.arange(n)
            for s in range(0, n, self.chunk):
                idx = order[s: s + self.chunk].tolist()
                ids = self.tok([self.texts[i] for i in idx], add_special_tokens=False)["input_ids"]
                for j, toks in enumerate(ids):
                    self.epoch = e + (s + j + 1) / n
                    yield toks
            e += 1

    def __iter__(self) -> Iterator[list[int]]:
        return pack_windows(self._token_lists(), self.window, self.sep_id)

    def documents(self) -> Iterator[tuple[list[int], list[int]]]:
        """Windows with their per-document ``position_ids`` (:func:`pack_documents`)."""
        return pack_documents(self._token_lists(), self.window, self.sep_id)


def _batches(stream: PackedStream, batch_size: int, packing: str = "stream") -> StreamBatches:
    """Consecutive windows of the endless stream, ``batch_size`` per rank (all of full length)."""
    make = (lambda: iter(stream)) if packing == "stream" else stream.documents
    return StreamBatches(make, batch_size, epoch=lambda: stream.epoch,
                         collate=_collate_stream if packing == "stream" else _collate_documents)


def _collate_stream(rows: list) -> StepBatch:
    import torch

    ids = torch.as_tensor(rows, dtype=torch.long)  # (B, window)
    return StepBatch({"input_ids": ids, "labels": ids.clone()}, n_units=ids.numel() - ids.shape[0],
                     n_tokens=ids.numel())


def _collate_documents(rows: list) -> StepBatch:
    import torch

    ids = torch.as_tensor([r[0] for r in rows], dtype=torch.long)  # (B, window)
    pos = torch.as_tensor([r[1] for r in rows], dtype=torch.long)  # (B, window), 0 where a document starts
    labels = ids.masked_fill(pos == 0, IGNORE_INDEX)  # a document's first token has nothing to predict it
    return StepBatch({"input_ids": ids, "labels": labels, "position_ids": pos},
                     n_units=int((labels[:, 1:] != IGNORE_INDEX).sum()), n_tokens=ids.numel())


def _lm_loss(model, t: dict):
    """Summed next-token loss over the labelled positions of the packed windows (every position for stream
    packing; within each document for document packing)."""
    import torch

    ids = t["input_ids"]  # (B, window), no padding
    if "position_ids" in t:
        kw = document_attention(model, t["position_ids"])
        logp, _ = sequence_logps(model, ids, kw["attention_mask"], t["labels"], position_ids=kw["position_ids"])
    else:
        logp, _ = sequence_logps(model, ids, torch.ones_like(ids), t["labels"])  # (B,)
    return -logp.sum(), {}


@holds_run_folder
def run_pretrain(cfg: PretrainConfig, reader=None, texts: Sequence[str] | Any = None,
                 progress: bool = True, text_column: str = "text") -> dict:
    """Continued pretraining as configured; returns the summary (also in ``output_dir/summary.json``).

    Args:
        cfg: a :class:`PretrainConfig`.
        reader: train this :class:`jmlr.reader.Reader` instead of loading ``cfg.model``.
        texts: use these texts instead of ``cfg.data``'s corpus/QA files; a ``datasets.Dataset`` gives the
            strings of its ``text_column``.
        progress: show a tqdm bar.
    """

    seed_everything(cfg.seed)
    if is_hf_dataset(texts):
        texts = [t for t in hf_text_column(texts, text_column) if t.strip()]
    reader = reader if reader is not None else load_reader(cfg.model)
    texts = list(texts) if texts is not None else pretrain_texts(cfg.data)
    tok = reader.tokenizer
    if cfg.data.separator:
        sep = tok.convert_tokens_to_ids(cfg.data.separator)
        if sep is None or sep == tok.unk_token_id:
            raise ValueError(f"data.separator {cfg.data.separator!r} is not a token of the tokenizer")
    else:
        sep = tok.eos_token_id
        if sep is None:
            raise ValueError("the tokenizer has no EOS token; set data.separator to a token of its vocabulary")
    if cfg.data.packing not in PACKINGS:
        raise ValueError(f"data.packing must be one of {PACKINGS}, got {cfg.data.packing!r}")
    max_pos = getattr(getattr(reader.base_model, "config", None), "max_position_embeddings", None)
    if max_pos and cfg.data.window > max_pos:
        raise ValueError(f"data.window={cfg.data.window} exceeds the model's max_position_embeddings={max_pos}")
    stream = PackedStream(texts, tok, cfg.data.window, sep, seed=cfg.seed, shuffle=cfg.data.shuffle,
                          chunk=cfg.data.tokenize_chunk)
    save_stage_config(cfg, cfg.output_dir)
    run = StageRun("pretrain", reader, _batches(stream, cfg.optim.batch_size, cfg.data.packing), _lm_loss,
                   extra_summary={"texts": len(texts), "window": cfg.data.window, "separator_id": int(sep),
                                  "packing": cfg.data.packing})
    return train_loop(cfg, run, progress=progress)


pretrain = run_pretrain
