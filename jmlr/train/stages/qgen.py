"""Question generation: the reader LLM writes MCQs from corpus passages, which are parsed, validated, filtered.

This is MQG's route to more training questions. For each passage the LM is prompted with the passage and a
fixed output format::

    Question: <question>
    A. <option>
    B. <option>
    C. <option>
    D. <option>
    Answer: <letter>

:func:`parse_mcq` turns a generation into ``(question, options, answer)``; :func:`validate_mcq` checks it
against its passage. A candidate is rejected, with exactly one reason (the first that applies, in this order):

=========================  ==================================================================================
``unparsable``             no ``Question:``, not exactly the four options A-D in order, an empty option, or
                           no ``Answer:`` line
``duplicate_options``      two options with the same normalised text
``answer_not_in_options``  the answer names no option (``Answer: E``, ``Answer: none of these``)
``copies_passage``         the question is lifted from the passage: a contiguous run of its words covering
                           at least ``max_copy`` (0.8) of the question also appears in the passage
``answer_not_supported``   fewer than ``min_support`` (0.5) of the answer text's content words (stopwords
                           dropped; CJK text by character) occur in the passage
``duplicate_question``     the same normalised question was already accepted (from any passage)
=========================  ==================================================================================

Accepted questions become :class:`~jmlr.data.QAExample`s with ``gold_passage_ids=[passage id]``, their options
optionally shuffled (generators favour putting the answer first). :func:`generate_questions` returns them with
the count of each rejection reason; :func:`run_qgen` also writes ``questions.jsonl`` (native ``jmlr``
format, loadable with ``load_qa("jmlr", ...)``), ``rejected.jsonl`` (raw text + reason) and ``summary.json``.

CLI: ``jmlr qgen --config configs/stages/qgen.yaml data.corpus=corpus.jsonl model.model=runs/sft/model``.
"""
from __future__ import annotations

import json
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jmlr.core.fields import config_field as _f
from jmlr.data.types import Passage, QAExample
from jmlr.core.precision import resolve_precision
from jmlr.data import Corpus, save_qa
from jmlr.data.hf import is_hf_dataset

from .config import StageModelConfig
from .counters import Counts
from .data_io import load_reader, resolve_corpus, seed_everything, write_json_atomic
from .engine import holds_run_folder
from .qgen_parse import LETTERS, ParsedMCQ, parse_mcq
from .qgen_validate import REJECTION_REASONS, _norm, answer_support, copy_ratio, validate_mcq
from .config import save_stage_config

__all__ = ["QGenSettings", "QGenConfig", "QGenDataConfig", "REJECTION_REASONS", "QGEN_INSTRUCTION", "ParsedMCQ",
           "parse_mcq", "validate_mcq", "answer_support", "copy_ratio", "qgen_prompt", "QGenResult",
           "generate_questions", "run_qgen", "qgen"]

QGEN_INSTRUCTION = (
    "Write one multiple-choice question that tests a fact stated in the passage. Give four options, A to D, "
    "exactly one of them correct, then the letter of the correct option. Use exactly this format:\n"
    "Question: <question>\nA. <option>\nB. <option>\nC. <option>\nD. <option>\nAnswer: <letter>"
)

# One worked example for base (non-chat) models, written for jmlr (an invented drug, not medical advice).
_SHOT_PASSAGE = ("Velorastat is an oral inhibitor of hepatic lipase used for familial chylomicronaemia. "
                 "The usual adult dose is 40 mg once daily with food; the most common adverse effect is "
                 "mild diarrhoea.")
_SHOT_MCQ = ("Question: What is the most common adverse effect of velorastat?\nA. Headache\nB. Mild diarrhoea\n"
             "C. Hair loss\nD. Dry cough\nAnswer: B")


@dataclass
class QGenDataConfig:
    """Which passages to write questions about."""

    corpus: str = _f("demo", "corpus file/folder (JSONL, TSV, text, markdown folder) or 'demo'")
    corpus_format: str = _f("", "corpus format; inferred from the extension when empty")
    max_passages: int = _f(100, "use at most this many passages (0 = all)")
    sample: bool = _f(True, "pick the passages at random (seeded) instead of the first ones")
    min_chars: int = _f(80, "skip passages shorter than this many characters")


@dataclass
class QGenSettings:
    """How :func:`generate_questions` writes and filters: decoding, the thresholds of :func:`validate_mcq`,
    option shuffling and the seed. :class:`QGenConfig` holds these keys at its top level."""

    seed: int = _f(0, "random seed (passage sample, option shuffle, sampling)")
    per_passage: int = _f(1, "generations per passage (>1 needs do_sample=true to differ)")
    max_new_tokens: int = _f(160, "max new tokens per generation")
    batch_size: int = _f(8, "prompts per generate call")
    do_sample: bool = _f(False, "sample instead of greedy decoding")
    temperature: float = _f(0.7, "sampling temperature (with do_sample)")
    top_p: float = _f(0.95, "nucleus sampling mass (with do_sample)")
    few_shot: bool = _f(True, "show one worked example in the prompt (plain templates)")
    min_support: float = _f(0.5, "min fraction of the answer's content words found in the passage")
    max_copy: float = _f(0.8, "reject a question when a run of its words this large a fraction of it is copied")
    shuffle_options: bool = _f(True, "shuffle the options of accepted questions (seeded)")


@dataclass
class QGenConfig(QGenSettings):
    """``jmlr qgen``: generate, validate and filter MCQs from corpus passages."""

    output_dir: str = _f("runs/qgen", "run folder: questions.jsonl, rejected.jsonl, summary.json, config.yaml")
    model: StageModelConfig = field(default_factory=lambda: StageModelConfig(max_length=1024),
                                    metadata={"help": "the LM that writes the questions"})
    data: QGenDataConfig = field(default_factory=QGenDataConfig, metadata={"help": "passages"})
    precision: str = _f("auto", "autocast precision during generation: auto (bf16 only where native), fp32, "
                                "bf16 or fp16")


# ------------------------------------------------------------------------------------------ generation
def qgen_prompt(passage: str, reader, few_shot: bool = True) -> tuple[str, bool]:
    """``(prompt, assume_question)``: a chat turn for ``template="chat"``, else the instruction, an optional
    worked example and the passage, ending with ``Question:`` so the generation starts with the question."""
    if reader.template == "chat":
        msg = f"{QGEN_INSTRUCTION}\n\nPassage: {passage.strip()}"
        return reader.tokenizer.apply_chat_template([{"role": "user", "content": msg}], tokenize=False,
                                                    add_generation_prompt=True), False
    shot = f"Passage: {_SHOT_PASSAGE}\n{_SHOT_MCQ}\n\n" if few_shot else ""
    return f"{QGEN_INSTRUCTION}\n\n{shot}Passage: {passage.strip()}\nQuestion:", True


@dataclass
class QGenResult:
    """Accepted questions, the count of every rejection reason, and every raw generation with its fate."""

    examples: list[QAExample]
    rejected: dict[str, int]
    records: list[dict] = field(default_factory=list)
    generated_tokens: int = 0
    wall_s: float = 0.0

    @property
    def n_generated(self) -> int:
        return len(self.records)

    def summary(self) -> dict:
        n = self.n_generated
        return {"generated": n, "accepted": len(self.examples),
                "acceptance_rate": len(self.examples) / n if n else 0.0, "rejected": dict(self.rejected),
                "generated_tokens": self.generated_tokens, "wall_s": self.wall_s}


def _shuffle(options: dict[str, str], answer: str, rng: random.Random) -> tuple[dict[str, str], str]:
    texts = list(options.values())
    order = list(range(len(texts)))
    rng.shuffle(order)
    new = {LETTERS[k]: texts[j] for k, j in enumerate(order)}
    return new, LETTERS[order.index(LETTERS.index(answer))]


def generate_questions(reader, passages: Sequence[Passage], settings: QGenSettings | None = None, *,
                       progress: bool = True, generate_fn: Any = None) -> QGenResult:
    """Let ``reader`` write MCQs about ``passages``; parse, validate and filter them.

    Args:
        reader: a :class:`~jmlr.reader.Reader` (its model writes the questions).
        passages: :class:`~jmlr.data.Passage` objects (ids become the questions' ``gold_passage_ids``).
        settings: a :class:`QGenSettings` (a :class:`QGenConfig` is one): generations per passage, decoding,
            the thresholds of :func:`validate_mcq`, option shuffling, seed. Default: ``QGenSettings()``.
        progress: show a tqdm bar while generating.
        generate_fn: ``f(prompts) -> list[str]`` replacing ``reader.generate`` (tests, or an external server).

    Returns:
        A :class:`QGenResult`; ``rejected`` holds every reason of :data:`REJECTION_REASONS` (zeros included).
    """
    import torch

    s = settings if settings is not None else QGenSettings()
    if s.per_passage < 1:
        raise ValueError(f"per_passage must be >= 1, got {s.per_passage}")
    t0 = time.perf_counter()
    rng = random.Random(s.seed)
    jobs: list[tuple[Passage, int]] = [(p, k) for p in passages for k in range(s.per_passage)]
    prompts, assume = [], []
    for p, _ in jobs:
        pr, aq = qgen_prompt(p.text, reader, few_shot=s.few_shot)
        prompts.append(pr)
        assume.append(aq)
    if generate_fn is None:
        kw: dict = {}
        if s.do_sample:
            kw.update(temperature=s.temperature, top_p=s.top_p)
        torch.manual_seed(s.seed)
        # plain templates continue the worked example, whose block has no blank line: stop at one, or when the
        # model starts another passage/question; chat models often space their answer with blank lines
        stop = ["\nPassage:"] + ([] if reader.template == "chat" else ["\n\n", "\nQuestion:"])
        texts = reader.generate(prompts, max_new_tokens=s.max_new_tokens, batch_size=s.batch_size,
                                do_sample=s.do_sample, stop=stop, progress=progress, **kw)
    else:
        texts = list(generate_fn(prompts))
    if len(texts) != len(prompts):
        raise ValueError(f"generator returned {len(texts)} texts for {len(prompts)} prompts")
    tok = reader.tokenizer
    gen_tokens = sum(len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"]) if texts else 0
    counts = Counts(REJECTION_REASONS)
    seen: set[str] = set()
    accepted: list[QAExample] = []
    records: list[dict] = []
    for (p, k), text, aq in zip(jobs, texts, assume):
        parsed = parse_mcq(text, assume_question=aq)
        letter, reason = validate_mcq(parsed, p.text, s.min_support, s.max_copy, seen)
        rec = {"passage_id": p.id, "k": k, "text": text, "reason": reason}
        records.append(rec)
        if reason is not None:
            counts.add(reason)
            continue
        seen.add(_norm(parsed.question))
        options, answer = dict(parsed.options), letter
        if s.shuffle_options:
            options, answer = _shuffle(options, answer, rng)
        eid = f"qgen-{p.id}-{k}"
        rec["id"] = eid
        accepted.append(QAExample(id=eid, question=parsed.question, options=options, answer=answer,
                                  gold_passage_ids=[p.id],
                                  metadata={"source": "qgen", "passage_id": p.id,
                                            "support": round(answer_support(options[answer], p.text), 3)}))
    return QGenResult(accepted, counts.as_dict(), records, gen_tokens, time.perf_counter() - t0)


def _pick_passages(corpus, cfg: QGenDataConfig, seed: int) -> list[Passage]:
    idx = [i for i in range(len(corpus)) if len(corpus[i].text) >= cfg.min_chars]
    if not idx:
        raise ValueError(f"no passage of the corpus has at least data.min_chars={cfg.min_chars} characters")
    if cfg.max_passages and len(idx) > cfg.max_passages:
        idx = sorted(random.Random(seed).sample(idx, cfg.max_passages)) if cfg.sample else idx[: cfg.max_passages]
    return [corpus[i] for i in idx]


@holds_run_folder
def run_qgen(cfg: QGenConfig, reader=None, passages: Sequence[Passage] | None = None, progress: bool = True,
             generate_fn: Any = None) -> dict:
    """Generate questions as configured; writes ``questions.jsonl``, ``rejected.jsonl`` and ``summary.json``.

    Returns the summary: generated / accepted counts, acceptance rate, the count of every rejection reason,
    wall time, generated tokens and a FLOPs estimate (``2 * N * tokens`` for prompt + generated tokens).
    """



    t0 = time.perf_counter()
    seed_everything(cfg.seed)
    reader = reader if reader is not None else load_reader(cfg.model)

    reader.autocast_dtype = resolve_precision(cfg.precision, reader.device, key="precision").dtype

    if is_hf_dataset(passages):  # a datasets.Dataset with id/text(/title) columns

        passages = _pick_passages(Corpus.from_hf(passages), cfg.data, cfg.seed)
    if passages is None:
        passages = _pick_passages(resolve_corpus(cfg.data.corpus, cfg.data.corpus_format or None), cfg.data, cfg.seed)
    passages = list(passages)
    if not passages:
        raise ValueError("no passages to generate questions from")
    out = Path(cfg.output_dir)
    save_stage_config(cfg, out)
    reader.model.eval()
    res = generate_questions(reader, passages, cfg, progress=progress, generate_fn=generate_fn)
    questions = out / "questions.jsonl"
    if res.examples:
        save_qa(res.examples, questions)
    elif questions.exists():
        questions.unlink()  # never leave an earlier run's questions next to this run's summary
    tmp = out / f".rejected.jsonl.tmp"
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in res.records if r["reason"]))
    tmp.replace(out / "rejected.jsonl")
    n_params = sum(p.numel() for p in reader.model.parameters())
    prompt_tokens = sum(len(ids) for ids in reader.tokenizer(
        [qgen_prompt(p.text, reader, cfg.few_shot)[0] for p in passages])["input_ids"]) * cfg.per_passage
    summary = {"stage": "qgen", **res.summary(), "passages": len(passages), "per_passage": cfg.per_passage,
               "prompt_tokens": prompt_tokens, "tokens": prompt_tokens + res.generated_tokens,
               "flops_est": 2.0 * n_params * (prompt_tokens + res.generated_tokens),
               "questions_file": str(questions) if res.examples else None,
               "output_dir": str(out)}
    summary["wall_s"] = time.perf_counter() - t0
    write_json_atomic(out / "summary.json", summary)
    return summary


qgen = run_qgen
