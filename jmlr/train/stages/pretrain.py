"""Continued pretraining on medical text, in packed token windows (PMC-LLaMA / Meditron's first stage).

Texts (corpus passages, and optionally QA pairs written out as text, e.g. Huatuo-26M) are tokenized without
special tokens, joined with an EOS separator, and the resulting stream is cut into windows of exactly
``window`` tokens::

    stream:  [t1 t1 t1 EOS t2 t2 t2 t2 t2 EOS t3 t3 EOS t4 ...]
    windows: [t1 t1 t1 EOS t2 t2 t2 t2] [t2 EOS t3 t3 EOS t4 ...] ...

No padding is spent: every token of every text appears exactly once (only the tail of the stream, shorter
than a window, forms one shorter window at the very end of a finite pass). Attention crosses the EOS
separators inside a window, as in GPT-style packed pretraining; the EOS token tells the model where a
document ends. The loss is the next-token loss on every position of the window.

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

from jmlr.config import _f

from .common import (StageModelConfig, StageOptimConfig, StepBatch, load_reader, resolve_corpus,
                     resolve_qa, save_stage_config, seed_everything, train_loop)

__all__ = ["PretrainConfig", "PretrainDataConfig", "pack_windows", "PackedStream", "qa_to_text",
           "pretrain_texts", "run_pretrain", "pretrain"]


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


@dataclass
class PretrainConfig:
    """``jmlr pretrain``: continued pretraining in packed windows."""

    output_dir: str = _f("runs/pretrain", "run folder: metrics.jsonl, summary.json, config.yaml, model/")
    seed: int = _f(0, "random seed")
    log_every: int = _f(1, "write a metrics row every N steps")
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


def _batches(stream: PackedStream, batch_size: int, pad_id: int) -> Iterator[StepBatch]:
    import torch

    it = iter(stream)
    while True:
        rows = [next(it) for _ in range(batch_size)]  # the stream is endless: windows are all full length
        ids = torch.as_tensor(rows, dtype=torch.long)  # (B, window)
        yield StepBatch({"input_ids": ids, "labels": ids.clone()}, n_units=ids.numel() - ids.shape[0],
                        n_tokens=ids.numel(), epoch=stream.epoch)


def _lm_loss(model, t: dict):
    """Summed next-token loss over every position of the packed windows."""
    import torch

    from .common import sequence_logps

    ids = t["input_ids"]  # (B, window), no padding
    logp, _ = sequence_logps(model, ids, torch.ones_like(ids), t["labels"])  # (B,)
    return -logp.sum(), {}


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
    from jmlr.data.hf import is_hf_dataset, text_column as hf_text_column

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
    max_pos = getattr(getattr(reader._base_model(), "config", None), "max_position_embeddings", None)
    if max_pos and cfg.data.window > max_pos:
        raise ValueError(f"data.window={cfg.data.window} exceeds the model's max_position_embeddings={max_pos}")
    stream = PackedStream(texts, tok, cfg.data.window, sep, seed=cfg.seed, shuffle=cfg.data.shuffle,
                          chunk=cfg.data.tokenize_chunk)
    save_stage_config(cfg, cfg.output_dir)
    return train_loop(stage="pretrain", reader=reader, batches=_batches(stream, cfg.optim.batch_size, sep),
                      loss_fn=_lm_loss, optim_cfg=cfg.optim, output_dir=cfg.output_dir, log_every=cfg.log_every,
                      progress=progress, extra_summary={"texts": len(texts), "window": cfg.data.window,
                                                        "separator_id": int(sep)})


pretrain = run_pretrain
