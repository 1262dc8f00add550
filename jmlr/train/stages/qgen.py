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
import re
import time
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jmlr.config import _f
from jmlr.data.types import Passage, QAExample

from .config import StageModelConfig
from .counters import Counts
from .data_io import load_reader, resolve_corpus, seed_everything, write_json_atomic
from .engine import holds_run_folder

__all__ = ["QGenConfig", "QGenDataConfig", "REJECTION_REASONS", "QGEN_INSTRUCTION", "ParsedMCQ", "parse_mcq",
           "validate_mcq", "answer_support", "copy_ratio", "qgen_prompt", "QGenResult", "generate_questions",
           "run_qgen", "qgen"]

REJECTION_REASONS = ("unparsable", "duplicate_options", "answer_not_in_options", "copies_passage",
                     "answer_not_supported", "duplicate_question")
LETTERS = ("A", "B", "C", "D")

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
class QGenConfig:
    """``jmlr qgen``: generate, validate and filter MCQs from corpus passages."""

    output_dir: str = _f("runs/qgen", "run folder: questions.jsonl, rejected.jsonl, summary.json, config.yaml")
    seed: int = _f(0, "random seed (passage sample, option shuffle, sampling)")
    model: StageModelConfig = field(default_factory=lambda: StageModelConfig(max_length=1024),
                                    metadata={"help": "the LM that writes the questions"})
    data: QGenDataConfig = field(default_factory=QGenDataConfig, metadata={"help": "passages"})
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
    precision: str = _f("auto", "autocast precision during generation: auto (bf16 only where native), fp32, "
                                "bf16 or fp16")


# ------------------------------------------------------------------------------------------ parsing
@dataclass
class ParsedMCQ:
    """A generation parsed into its parts (not yet validated)."""

    question: str
    options: dict[str, str]
    answer_raw: str


_Q = re.compile(r"^\s*(?:\*\*)?(?:question|q)\s*(?:\d+)?\s*[:.)]\s*(?:\*\*)?\s*(.*)$", re.IGNORECASE)
_OPT = re.compile(r"^\s*(?:\*\*)?[\(\[]?([A-Za-z])(?:[\)\]]|\s*[.:)])(?:\*\*)?\s*(.*)$")
_OPTIONS_HEADER = re.compile(r"^\s*(?:\*\*)?(?:options|choices)\s*:?\s*(?:\*\*)?\s*$", re.IGNORECASE)
_ANS = re.compile(r"^\s*(?:\*\*)?(?:correct\s+|final\s+)?answer(?:\s+is)?\s*[:\-]?(?:\*\*)?\s*(.*)$", re.IGNORECASE)


def parse_mcq(text: str, assume_question: bool = False) -> ParsedMCQ | None:
    """Parse ``Question: ... / A. .. D. ... / Answer: X`` (``None`` if the text does not follow the format).

    Lenient on what models vary (a preamble before ``Question:``, ``A)``, ``(A)``, ``A:``, ``**Answer:** B``,
    blank lines, a question spread over several lines) and strict on the substance: the question is non-empty, the options are exactly
    A, B, C, D in that order, each non-empty, and an ``Answer`` line follows them. Text after the answer
    line is ignored.

    Args:
        text: the generation.
        assume_question: the prompt already ended with ``Question:``, so the text starts with the question.
    """
    if not isinstance(text, str):
        return None
    lines = [ln.rstrip() for ln in text.replace("\r\n", "\n").split("\n")]
    i, n = 0, len(lines)
    q_parts: list[str] = []
    if assume_question:
        lines[0] = "Question: " + lines[0] if lines else "Question:"
    while i < n and not _Q.match(lines[i]):  # skip a preamble ("Here is a question:")
        i += 1
    if i >= n:
        return None
    m = _Q.match(lines[i])
    if m.group(1).strip():
        q_parts.append(m.group(1).strip())
    i += 1
    while i < n and not _OPT.match(lines[i]) and not _ANS.match(lines[i]):
        if lines[i].strip():
            q_parts.append(lines[i].strip())
        i += 1
    options: dict[str, str] = {}
    while i < n:
        ln = lines[i]
        if not ln.strip():
            i += 1
            continue
        if _ANS.match(ln):
            break
        if not options and _OPTIONS_HEADER.match(ln):  # "Options:" before the first option
            i += 1
            continue
        m = _OPT.match(ln)
        if len(options) == 4:  # after D: a fifth option is an error; other text (an explanation) is skipped
            if m and m.group(1).upper() == "E":
                return None
            i += 1
            continue
        if not m or m.group(1).upper() != LETTERS[len(options)]:
            if options and not m:  # a wrapped line of the previous option
                last = list(options)[-1]
                options[last] = (options[last] + " " + ln.strip()).strip()
                i += 1
                continue
            return None  # options out of order, a fifth letter, or text where options should be
        options[m.group(1).upper()] = m.group(2).strip()
        i += 1
    question = " ".join(q_parts).strip()
    if not question or len(options) != 4 or any(not v for v in options.values()) or i >= n:
        return None
    m = _ANS.match(lines[i])
    if not m:
        return None
    answer_raw = m.group(1).strip()
    if not answer_raw and i + 1 < n:
        answer_raw = lines[i + 1].strip()
    if not answer_raw:
        return None
    return ParsedMCQ(question=question, options=options, answer_raw=answer_raw)


def _resolve_answer(answer_raw: str, options: dict[str, str]) -> str | None:
    """The option letter the answer line names (letter or option text), else ``None``."""
    from jmlr.reader.parse import parse_answer

    m = re.match(r"^[\(\[]?([A-Za-z])[\)\]]?(?:[.:)]|\s|$)", answer_raw.strip())
    if m and (len(answer_raw.strip()) == 1 or not answer_raw.strip()[1:2].isalpha()):
        letter = m.group(1).upper()
        return letter if letter in options else None
    return parse_answer(answer_raw, options)


# ------------------------------------------------------------------------------------------ validation
_STOP = frozenset("""a an the of in on at to for from by with without and or but not no nor is are was were be been
being it its this that these those as than then which who whom whose what when where why how do does did done
has have had having can could may might must shall should will would very more most less least such same other
into onto over under after before about above below between during per via each any all both either neither
only also there their they them he she his her him i we you your our us one""".split())
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")
_WORD = re.compile(r"\w+")


def _tokens(text: str) -> list[str]:
    """NFKC + casefold word tokens; CJK characters are tokens of their own (no spaces to split on)."""
    out = []
    for w in _WORD.findall(unicodedata.normalize("NFKC", text).casefold()):
        if _CJK.search(w):
            buf = ""
            for ch in w:
                if _CJK.match(ch):
                    if buf:
                        out.append(buf)
                        buf = ""
                    out.append(ch)
                else:
                    buf += ch
            if buf:
                out.append(buf)
        else:
            out.append(w)
    return out


def _norm(text: str) -> str:
    return " ".join(_tokens(text))


def answer_support(answer_text: str, passage: str) -> float:
    """Fraction of the answer's content tokens (stopwords dropped, unless nothing else is left) found in the
    passage; 0.0 for an answer with no tokens."""
    toks = _tokens(answer_text)
    content = [t for t in toks if t not in _STOP] or toks
    if not content:
        return 0.0
    have = set(_tokens(passage))
    return sum(t in have for t in content) / len(content)


def copy_ratio(question: str, passage: str) -> float:
    """Length of the longest contiguous token run shared by question and passage, over the question's length."""
    q, p = _tokens(question), _tokens(passage)
    if not q or not p:
        return 0.0
    best, prev = 0, [0] * (len(p) + 1)
    for a in q:  # longest common substring over tokens, O(|q|*|p|)
        cur = [0] * (len(p) + 1)
        for j, b in enumerate(p, 1):
            if a == b:
                cur[j] = prev[j - 1] + 1
                if cur[j] > best:
                    best = cur[j]
        prev = cur
    return best / len(q)


def validate_mcq(parsed: ParsedMCQ | None, passage: str, min_support: float = 0.5, max_copy: float = 0.8,
                 seen_questions: set[str] | None = None) -> tuple[str | None, str | None]:
    """``(answer_letter, None)`` for a valid question, else ``(None, reason)`` with reason in
    :data:`REJECTION_REASONS`. ``seen_questions`` (normalised texts) catches duplicates; the caller adds
    accepted questions to it."""
    if parsed is None:
        return None, "unparsable"
    normed = [_norm(v) for v in parsed.options.values()]
    if len(set(normed)) != len(normed):
        return None, "duplicate_options"
    letter = _resolve_answer(parsed.answer_raw, parsed.options)
    if letter is None:
        return None, "answer_not_in_options"
    if len(_tokens(parsed.question)) >= 4 and copy_ratio(parsed.question, passage) >= max_copy:
        return None, "copies_passage"
    if answer_support(parsed.options[letter], passage) < min_support:
        return None, "answer_not_supported"
    if seen_questions is not None and _norm(parsed.question) in seen_questions:
        return None, "duplicate_question"
    return letter, None


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


def generate_questions(reader, passages: Sequence[Passage], per_passage: int = 1, max_new_tokens: int = 160,
                       batch_size: int = 8, do_sample: bool = False, temperature: float = 0.7, top_p: float = 0.95,
                       few_shot: bool = True, min_support: float = 0.5, max_copy: float = 0.8,
                       shuffle_options: bool = True, seed: int = 0, progress: bool = True,
                       generate_fn: Any = None) -> QGenResult:
    """Let ``reader`` write MCQs about ``passages``; parse, validate and filter them.

    Args:
        reader: a :class:`~jmlr.reader.Reader` (its model writes the questions).
        passages: :class:`~jmlr.data.Passage` objects (ids become the questions' ``gold_passage_ids``).
        per_passage: generations per passage.
        generate_fn: ``f(prompts) -> list[str]`` replacing ``reader.generate`` (tests, or an external server).
        The rest: decoding and the thresholds of :func:`validate_mcq`.

    Returns:
        A :class:`QGenResult`; ``rejected`` holds every reason of :data:`REJECTION_REASONS` (zeros included).
    """
    import torch

    if per_passage < 1:
        raise ValueError(f"per_passage must be >= 1, got {per_passage}")
    t0 = time.perf_counter()
    rng = random.Random(seed)
    jobs: list[tuple[Passage, int]] = [(p, k) for p in passages for k in range(per_passage)]
    prompts, assume = [], []
    for p, _ in jobs:
        pr, aq = qgen_prompt(p.text, reader, few_shot=few_shot)
        prompts.append(pr)
        assume.append(aq)
    if generate_fn is None:
        kw: dict = {}
        if do_sample:
            kw.update(temperature=temperature, top_p=top_p)
        torch.manual_seed(seed)
        # plain templates continue the worked example, whose block has no blank line: stop at one, or when the
        # model starts another passage/question; chat models often space their answer with blank lines
        stop = ["\nPassage:"] + ([] if reader.template == "chat" else ["\n\n", "\nQuestion:"])
        texts = reader.generate(prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, do_sample=do_sample,
                                stop=stop, progress=progress, **kw)
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
        letter, reason = validate_mcq(parsed, p.text, min_support, max_copy, seen)
        rec = {"passage_id": p.id, "k": k, "text": text, "reason": reason}
        records.append(rec)
        if reason is not None:
            counts.add(reason)
            continue
        seen.add(_norm(parsed.question))
        options, answer = dict(parsed.options), letter
        if shuffle_options:
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

    from jmlr.data import save_qa

    from .config import save_stage_config

    t0 = time.perf_counter()
    seed_everything(cfg.seed)
    reader = reader if reader is not None else load_reader(cfg.model)
    from jmlr.core.precision import resolve_precision

    reader.autocast_dtype = resolve_precision(cfg.precision, reader.device, key="precision").dtype
    from jmlr.data.hf import is_hf_dataset

    if is_hf_dataset(passages):  # a datasets.Dataset with id/text(/title) columns
        from jmlr.data import Corpus

        passages = _pick_passages(Corpus.from_hf(passages), cfg.data, cfg.seed)
    if passages is None:
        passages = _pick_passages(resolve_corpus(cfg.data.corpus, cfg.data.corpus_format or None), cfg.data, cfg.seed)
    passages = list(passages)
    if not passages:
        raise ValueError("no passages to generate questions from")
    out = Path(cfg.output_dir)
    save_stage_config(cfg, out)
    reader.model.eval()
    res = generate_questions(reader, passages, per_passage=cfg.per_passage, max_new_tokens=cfg.max_new_tokens,
                             batch_size=cfg.batch_size, do_sample=cfg.do_sample, temperature=cfg.temperature,
                             top_p=cfg.top_p, few_shot=cfg.few_shot, min_support=cfg.min_support,
                             max_copy=cfg.max_copy, shuffle_options=cfg.shuffle_options, seed=cfg.seed,
                             progress=progress, generate_fn=generate_fn)
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
