"""Supervised fine-tuning with the loss on the response only (PMC-LLaMA / Meditron's second stage).

Every training sequence is ``prompt_ids + response_ids (+ EOS)``; labels are ``-100`` on the prompt and on
padding, so the loss is ``-sum log p(response tokens | prompt)`` averaged over the response tokens of the
whole optimizer step::

    input_ids: [p p p p p p | r r r EOS | pad pad]
    labels:    [-100 ...    | r r r EOS | -100 -100]

The prompt and the response are tokenized separately and concatenated: that is exactly what the model sees
at inference (the prompt alone, then its own tokens), so the boundary never merges two tokens.

Two sources of (prompt, response) pairs:

* instruction data, JSONL ``{"instruction", "input"?, "output"}`` (Alpaca-style; also ``{"prompt",
  "response"}``): :func:`load_instructions` + :func:`instruction_examples`, rendered with the reader's
  template (a chat turn for ``template="chat"``, ``Instruction: / Input: / Response:`` otherwise);
* multiple-choice :class:`~jmlr.data.QAExample`s: :func:`sft_examples_from_qa` -- the prompt is the reader's
  own template with optional passages (truncated to fit, as the reader does), the response the answer letter
  (``target="letter"``) or letter + option text (``"letter_text"``); free-text QA (Huatuo) answers with its
  ``answer_text``. This is how the separate-pipeline arms of the joint-vs-separate benchmark fine-tune.

Python::

    from jmlr.train.stages import SFTConfig, run_sft, sft_examples_from_qa
    examples = sft_examples_from_qa(train_qa, reader, passages=[[p] for p in gold_texts])
    summary = run_sft(SFTConfig(output_dir="runs/sft"), reader=reader, examples=examples)

CLI: ``jmlr sft --config configs/stages/sft.yaml data.qa=train.jsonl data.qa_format=medqa``.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from jmlr.core.fields import config_field as _f
from jmlr.data import DataFormatError
from jmlr.data.hf import column_names, is_hf_dataset, records, resolve_dataset

from .batching import IGNORE_INDEX, IndexedBatches, StepBatch, right_pad, sequence_logps
from .config import StageModelConfig, StageOptimConfig, StageRunConfig, save_stage_config
from .data_io import (add_special_tokens_for, iter_json_lines, load_reader, resolve_corpus, resolve_qa,
                      seed_everything)
from .engine import StageRun, holds_run_folder, train_loop
from .progressive import expand_cases, load_progressive

__all__ = ["SFTConfig", "SFTDataConfig", "SFTExample", "EncodedSFT", "Instruction", "load_instructions",
           "format_instruction", "instruction_examples", "sft_examples_from_qa", "sft_examples_from_hf",
           "gold_passages", "encode_sft",
           "sft_loss", "run_sft", "sft"]

_INSTRUCTION = "an instruction record {instruction, input?, output} or {prompt, response}"


@dataclass
class SFTDataConfig:
    """Where the SFT pairs come from (any combination is concatenated)."""

    instructions: str = _f("", "instruction JSONL {instruction, input?, output} (or {prompt, response}); '' for none")
    qa: str = _f("demo", "multiple-choice (or free-text) QA file to fine-tune on, 'demo', or '' for none")
    qa_format: str = _f("jmlr", "format of data.qa (see jmlr.data.load_qa): jmlr, medqa, medmcqa, huatuo, ...")
    progressive: str = _f("", "progressive-case JSONL (see jmlr.train.stages.progressive); '' for none")
    passages: str = _f("none", "passages in QA prompts: none, or gold (each question's gold_passage_ids from "
                               "data.corpus)")
    corpus: str = _f("demo", "corpus holding the gold passages (for passages=gold)")
    corpus_format: str = _f("", "corpus format; inferred from the extension when empty")
    target: str = _f("letter", "MCQ response: letter (' B') or letter_text (' B. <option text>')")
    add_eos: bool = _f(True, "append the EOS token to every response (the model learns to stop)")
    max_examples: int = _f(0, "use at most this many pairs (0 = all)")


@dataclass
class SFTConfig(StageRunConfig):
    """``jmlr sft``: supervised fine-tuning, loss on the response only."""

    output_dir: str = _f("runs/sft", "run folder: metrics.jsonl, summary.json, config.yaml, model/, checkpoints/")
    model: StageModelConfig = field(default_factory=StageModelConfig, metadata={"help": "the reader to train"})
    data: SFTDataConfig = field(default_factory=SFTDataConfig, metadata={"help": "training pairs"})
    optim: StageOptimConfig = field(default_factory=StageOptimConfig, metadata={"help": "optimisation"})


# ------------------------------------------------------------------------------------------ records
@dataclass(frozen=True)
class SFTExample:
    """One training pair: the response is appended verbatim to the prompt (mind the leading space)."""

    prompt: str
    response: str
    id: str = ""


@dataclass(frozen=True)
class Instruction:
    """One instruction-data record."""

    instruction: str
    output: str
    input: str = ""
    id: str = ""


@dataclass
class EncodedSFT:
    """Token ids and labels of one pair (``labels`` is ``-100`` on the prompt)."""

    input_ids: list[int]
    labels: list[int]
    id: str = ""
    truncated: bool = False

    @property
    def n_labels(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE_INDEX)


def load_instructions(path) -> list[Instruction]:
    """Read instruction JSONL (or a JSON array): ``{"instruction", "input"?, "output"}`` or ``{"prompt", "response"}``.

    Raises ``ValueError`` naming the file and line for a missing or empty field.
    """

    out: list[Instruction] = []
    for i, (where, rec) in enumerate(iter_json_lines(path, _INSTRUCTION)):
        if "prompt" in rec and "instruction" not in rec:
            keys = ("prompt", "response")
        else:
            keys = ("instruction", "output")
        vals = []
        for k in keys:
            v = rec.get(k)
            if not isinstance(v, str) or not v.strip():
                raise DataFormatError(path, where, f"field {k!r} is {v!r}; expected a non-empty text ({_INSTRUCTION})")
            vals.append(v)
        inp = rec.get("input", "") or ""
        if not isinstance(inp, str):
            raise DataFormatError(path, where, f"field 'input' is {type(inp).__name__}; expected a text")
        out.append(Instruction(instruction=vals[0], output=vals[1], input=inp, id=str(rec.get("id", f"inst-{i}"))))
    return out


def format_instruction(instruction: str, input: str, template: str, tokenizer=None) -> tuple[str, str]:
    """``(prompt, lead)`` for an instruction: a chat turn (``lead=""``) for ``template="chat"``, else
    ``Instruction: ... / Input: ... / Response:`` (``lead=" "``, the response follows after a space)."""
    body = instruction.strip() + (f"\n\n{input.strip()}" if input and input.strip() else "")
    if template == "chat":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ValueError("template='chat' needs a tokenizer with a chat template")
        return tokenizer.apply_chat_template([{"role": "user", "content": body}], tokenize=False,
                                             add_generation_prompt=True), ""
    prompt = f"Instruction: {instruction.strip()}\n"
    if input and input.strip():
        prompt += f"Input: {input.strip()}\n"
    return prompt + "Response:", " "


def instruction_examples(records: Sequence[Instruction], reader) -> list[SFTExample]:
    """Render instruction records with ``reader``'s template into :class:`SFTExample` pairs."""
    out = []
    for r in records:
        prompt, lead = format_instruction(r.instruction, r.input, reader.template, reader.tokenizer)
        out.append(SFTExample(prompt=prompt, response=lead + r.output.strip(), id=r.id))
    return out


def gold_passages(examples: Sequence[Any], corpus, with_title: bool = True) -> list[list[str]]:
    """Each example's gold passages (``gold_passage_ids``) as texts from ``corpus``; errors name the id."""
    rows = []
    for ex in examples:
        row = []
        for pid in ex.gold_passage_ids:
            try:
                p = corpus.get(pid)
            except KeyError:
                raise ValueError(f"example {ex.id!r}: gold passage {pid!r} is not in the corpus") from None
            row.append(p.full_text() if with_title else p.text)
        rows.append(row)
    return rows


def sft_examples_from_qa(examples: Sequence[Any], reader, passages: Sequence[Sequence[str]] | None = None,
                         target: str | None = None, add_eos: bool = True) -> list[SFTExample]:
    """SFT pairs from QA examples: prompt = the reader's template (with ``passages[i]`` if given), response =
    the answer the reader scores (``" B"`` / ``" B. text"`` / the free-text answer).

    Args:
        examples: :class:`~jmlr.data.QAExample` objects with an answer (letter, or ``answer_text``).
        reader: the :class:`~jmlr.reader.Reader` to be trained (its template and ``max_length``).
        passages: one list of passage texts per example (e.g. gold or retrieved), or ``None`` (closed book).
            Passages are truncated so that prompt + response (+ EOS) fit in ``reader.max_length``.
        target: ``"letter"`` or ``"letter_text"`` (default: the reader's ``target``).
        add_eos: reserve a token for the EOS that :func:`encode_sft` appends.
    """
    examples = list(examples)
    if passages is not None and len(passages) != len(examples):
        raise ValueError(f"got {len(examples)} examples but {len(passages)} passage lists")
    kind = target or reader.target
    responses = [reader.target_for(ex, kind=kind) for ex in examples]
    tok = reader.tokenizer
    rows = [list(p) for p in passages] if passages is not None else [[] for _ in examples]
    # group by the number of tokens to reserve after the prompt, so format_prompts fits passages once per group
    reserve = []
    for r in responses:
        n = len(tok(r, add_special_tokens=False)["input_ids"]) + (1 if add_eos else 0)
        reserve.append(min(n, reader.max_length // 2))  # long free-text answers are cut by encode_sft instead
    prompts: list[str | None] = [None] * len(examples)
    groups: dict[int, list[int]] = {}
    for i, n in enumerate(reserve):
        groups.setdefault(n, []).append(i)
    for n, idx in groups.items():
        got = reader.format_prompts([examples[i] for i in idx], [rows[i] for i in idx], reserve_tokens=n)
        for i, p in zip(idx, got):
            prompts[i] = p
    return [SFTExample(prompt=p, response=r, id=ex.id) for p, r, ex in zip(prompts, responses, examples)]


def encode_sft(examples: Sequence[SFTExample], reader, max_length: int | None = None,
               add_eos: bool = True) -> tuple[list[EncodedSFT], Counter]:
    """Tokenize pairs: ``prompt_ids + response_ids (+ EOS)`` with labels ``-100`` on the prompt.

    A pair longer than ``max_length`` (default ``reader.max_length``) keeps its whole prompt and loses the end
    of its response (``truncated=True``); a pair whose prompt alone leaves no room is skipped.

    Returns:
        ``(encoded, counts)`` with ``counts["skipped_prompt_too_long"]`` and ``counts["response_truncated"]``.
    """
    tok = reader.tokenizer
    max_length = max_length or reader.max_length
    special = add_special_tokens_for(reader)
    eos = tok.eos_token_id
    if add_eos and eos is None:
        raise ValueError("add_eos=True but the tokenizer has no EOS token")
    counts: Counter = Counter(skipped_prompt_too_long=0, response_truncated=0)
    if not examples:
        return [], counts
    p_ids = tok([e.prompt for e in examples], add_special_tokens=special)["input_ids"]
    r_ids = tok([e.response for e in examples], add_special_tokens=False)["input_ids"]
    out = []
    for ex, p, r in zip(examples, p_ids, r_ids):
        if not ex.response:
            raise ValueError(f"SFT example {ex.id!r}: empty response")
        r = list(r) + ([eos] if add_eos else [])
        truncated = False
        if len(p) + len(r) > max_length:
            room = max_length - len(p)
            if room < 1:
                counts["skipped_prompt_too_long"] += 1
                continue
            r, truncated = r[:room], True
            counts["response_truncated"] += 1
        out.append(EncodedSFT(list(p) + r, [IGNORE_INDEX] * len(p) + r, ex.id, truncated))
    return out, counts


def sft_loss(model, t: dict):
    """Summed negative log-likelihood of the labelled (response) tokens of a right-padded batch."""
    logp, n = sequence_logps(model, t["input_ids"], t["attention_mask"], t["labels"])  # (B,), (B,)
    return -logp.sum(), {}


def _collate(rows: Sequence[EncodedSFT], pad_id: int) -> StepBatch:
    t = right_pad([r.input_ids for r in rows], [r.labels for r in rows], pad_id)
    # a label at position 0 is never predicted (nothing precedes it)
    units = sum(sum(1 for x in r.labels[1:] if x != IGNORE_INDEX) for r in rows)
    return StepBatch(t, n_units=units, n_tokens=sum(len(r.input_ids) for r in rows))


def build_sft_examples(cfg: SFTConfig, reader) -> list[SFTExample]:
    """The pairs named by ``cfg.data``: instructions, QA examples (with passages) and progressive cases."""
    d = cfg.data
    pairs: list[SFTExample] = []
    if d.instructions:
        pairs += instruction_examples(load_instructions(d.instructions), reader)
    qa: list = []
    if d.qa:
        qa += resolve_qa(d.qa, d.qa_format, "train")
    if d.progressive:

        qa += expand_cases(load_progressive(d.progressive))
    if qa:
        if d.passages == "gold":
            corpus = resolve_corpus(d.corpus, d.corpus_format or None)
            passages = gold_passages(qa, corpus)
        elif d.passages == "none":
            passages = None
        else:
            raise ValueError(f"data.passages must be 'none' or 'gold', got {d.passages!r}")
        pairs += sft_examples_from_qa(qa, reader, passages, target=d.target, add_eos=d.add_eos)
    if not pairs:
        raise ValueError("no SFT data: set data.instructions, data.qa and/or data.progressive")
    if d.max_examples:
        pairs = pairs[: d.max_examples]
    return pairs


def sft_examples_from_hf(dataset, reader) -> list[SFTExample]:
    """SFT pairs from a ``datasets.Dataset`` with ``prompt``/``response`` columns (used verbatim), or with
    ``instruction``/``output`` (and optional ``input``) columns (rendered like instruction records)."""

    ds, desc = resolve_dataset(dataset)
    cols = column_names(ds)
    verbatim = "prompt" in cols and "instruction" not in cols
    fields = {"prompt": "prompt", "response": "response"} if verbatim else \
        {"instruction": "instruction", "output": "output", "input": "input", "id": "id"}
    if not verbatim and "instruction" not in cols:
        raise ValueError(f"{desc}: expected columns prompt/response or instruction/output(/input); "
                         f"the dataset has {cols}")
    out: list[SFTExample] = []
    insts: list[Instruction] = []
    for i, (where, rec) in enumerate(records(ds, fields, optional=("input", "id"))):
        need = ("prompt", "response") if verbatim else ("instruction", "output")
        for k in need:
            if not isinstance(rec.get(k), str) or not rec[k].strip():
                raise DataFormatError(None, where, f"column {k!r} is {rec.get(k)!r}; expected a non-empty text")
        if verbatim:
            out.append(SFTExample(prompt=rec["prompt"], response=rec["response"], id=f"hf-{i}"))
        else:
            insts.append(Instruction(instruction=rec["instruction"], output=rec["output"], input=rec.get("input") or "",
                                     id=str(rec.get("id") or f"hf-{i}")))
    return out if verbatim else instruction_examples(insts, reader)




@holds_run_folder
def run_sft(cfg: SFTConfig, reader=None, examples: Sequence[SFTExample] | None = None,
            progress: bool = True) -> dict:
    """Supervised fine-tuning as configured; returns the summary (also in ``output_dir/summary.json``).

    Args:
        cfg: an :class:`SFTConfig`.
        reader: train this :class:`~jmlr.reader.Reader` instead of loading ``cfg.model``.
        examples: train on these :class:`SFTExample` pairs instead of ``cfg.data`` (or on a ``datasets.Dataset``,
            see :func:`sft_examples_from_hf`).
        progress: show a tqdm bar.
    """

    seed_everything(cfg.seed)
    reader = reader if reader is not None else load_reader(cfg.model)
    if is_hf_dataset(examples):
        examples = sft_examples_from_hf(examples, reader)
    pairs = list(examples) if examples is not None else build_sft_examples(cfg, reader)
    enc, counts = encode_sft(pairs, reader, reader.max_length, add_eos=cfg.data.add_eos)
    if not enc:
        raise ValueError(f"no SFT pair fits in max_length={reader.max_length} "
                         f"({counts['skipped_prompt_too_long']} prompts too long)")
    save_stage_config(cfg, cfg.output_dir)
    pad = reader.tokenizer.pad_token_id if reader.tokenizer.pad_token_id is not None else 0
    data = IndexedBatches(enc, cfg.optim.batch_size, cfg.seed, collate=lambda rows: _collate(rows, pad))
    run = StageRun("sft", reader, data, sft_loss, extra_summary={"pairs": len(enc), **dict(counts)})
    return train_loop(cfg, run, progress=progress)


sft = run_sft
