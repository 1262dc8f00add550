"""Prompt templates for the reader: JMLR's plain style, a chat-template variant, and free-text QA.

Every template turns ``(question, options, passages)`` into ONE prompt string whose answer follows it
directly, so that ``prompt + target`` is the sequence the reader scores. The three templates:

``jmlr`` (base models; JMLR's "Reference / Question / Correct Answer" layout)::

    Reference [1]: <passage 1>
    Reference [2]: <passage 2>

    Question: <question>
    Options:
    A. <option A>
    B. <option B>
    Correct Answer:

  The target continues the last line: ``" B"`` (``target="letter"``) or ``" B. <option B>"``
  (``target="letter_text"``); note the leading space. With ``target="option_text"`` (cloze scoring) the
  options are NOT listed and the target is the option's text itself, ``" <option B>"``: the reader must
  produce the answer, not bind it to a letter, which is what makes small readers use the passages.

``chat`` (instruct models): one user message with an instruction, the references, the question and the
  options, rendered by ``tokenizer.apply_chat_template(..., add_generation_prompt=True)``. The target is the
  start of the assistant turn: ``"B"`` or ``"B. <option B>"`` (no leading space).

``freetext`` (open questions, e.g. Huatuo): references, ``Question: ...`` and ``Answer:``; the target is
  ``" <answer text>"``. If options are given they are listed, and letter targets work as for ``jmlr``.

Passages appear in the order given. With no passages the reference block is left out.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = ["TEMPLATES", "TARGET_KINDS", "build_prompt", "target_string", "CHAT_INSTRUCTION_MCQ", "CHAT_INSTRUCTION_FREE"]

TEMPLATES = ("jmlr", "chat", "freetext")
TARGET_KINDS = ("letter", "letter_text", "option_text")

CHAT_INSTRUCTION_MCQ = (
    "Answer the following multiple-choice medical question, using the references if they help. "
    "Reply with the letter of the correct option."
)
CHAT_INSTRUCTION_FREE = "Answer the following medical question, using the references if they help."


def check_template(template: str) -> str:
    """Return ``template`` if known, else raise ``ValueError`` listing the known ones."""
    if template not in TEMPLATES:
        raise ValueError(f"unknown reader template {template!r}; expected one of {', '.join(TEMPLATES)}")
    return template


def _references(passages: Sequence[str]) -> str:
    return "\n".join(f"Reference [{i}]: {p}" for i, p in enumerate(passages, 1))


def _options_block(options: Mapping[str, str] | None) -> str:
    if not options:
        return ""
    return "Options:\n" + "\n".join(f"{letter}. {text}" for letter, text in options.items()) + "\n"


def build_prompt(
    template: str,
    question: str,
    options: Mapping[str, str] | None,
    passages: Sequence[str] = (),
    tokenizer=None,
) -> str:
    """Render one prompt. ``tokenizer`` is needed (and must have a chat template) for ``template="chat"``.

    Args:
        template: ``"jmlr"``, ``"chat"`` or ``"freetext"``.
        question: the question text.
        options: letter -> option text (``None`` or ``{}`` for free-text questions).
        passages: the passage texts, shown in this order.
        tokenizer: a Hugging Face tokenizer (only used by ``chat``).

    Returns:
        The prompt; the answer target (see :func:`target_string`) is appended to it verbatim.
    """
    check_template(template)
    passages = list(passages)
    refs = _references(passages)
    opts = _options_block(options)
    if template == "jmlr":
        head = f"{refs}\n\n" if passages else ""
        return f"{head}Question: {question}\n{opts}Correct Answer:"
    if template == "freetext":
        head = f"{refs}\n\n" if passages else ""
        return f"{head}Question: {question}\n{opts}Answer:"
    # chat
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            "template='chat' needs a tokenizer with a chat template (tokenizer.chat_template is empty); "
            "use template='jmlr' for base models"
        )
    instruction = CHAT_INSTRUCTION_MCQ if options else CHAT_INSTRUCTION_FREE
    body = instruction + "\n\n"
    if passages:
        body += refs + "\n\n"
    body += f"Question: {question}\n{opts}".rstrip("\n")
    messages = [{"role": "user", "content": body}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def target_string(
    template: str,
    letter: str | None,
    options: Mapping[str, str] | None,
    kind: str = "letter",
    answer_text: str | None = None,
) -> str:
    """The answer string that follows the prompt.

    Args:
        template: the prompt template (decides the leading space: none after a chat generation prompt).
        letter: the gold option letter (MCQ), or ``None`` for free-text answers.
        options: the question's options (needed for ``kind="letter_text"``).
        kind: ``"letter"`` (``" B"``, the cheapest: one token on most tokenizers), ``"letter_text"``
            (``" B. <option text>"``) or ``"option_text"`` (``" <option text>"``, cloze scoring).
        answer_text: the free-text answer, used when ``letter`` is ``None``.
    """
    check_template(template)
    lead = "" if template == "chat" else " "
    if letter is None:
        if not answer_text:
            raise ValueError("a target needs an answer letter or an answer text")
        return lead + answer_text.strip()
    if kind == "letter":
        return lead + letter
    if kind in ("letter_text", "option_text"):
        if not options or letter not in options:
            raise ValueError(f"target kind {kind!r} needs option {letter!r} in the options {list(options or {})}")
        text = str(options[letter]).strip()
        if not text:
            raise ValueError(f"target kind {kind!r}: option {letter!r} has no text")
        return f"{lead}{letter}. {text}" if kind == "letter_text" else lead + text
    raise ValueError(f"unknown target kind {kind!r}; expected one of {', '.join(TARGET_KINDS)}")
