"""The reader: any Hugging Face causal LM scoring and generating answers given retrieved passages.

``Reader`` (``answer_loglik``, ``concat_loglik``, ``loo_loglik``, ``score_options``, ``predict``, ``generate``),
the prompt templates (:mod:`jmlr.reader.prompts`) and the answer parser (:func:`parse_answer`, which never
falls back to a default letter). Importing this package imports torch.
"""
from .parse import normalize_answer, parse_answer
from .prompts import TEMPLATES, build_prompt, target_string
from .reader import Encoded, Reader, TokenLoglik

__all__ = ["Reader", "Encoded", "TokenLoglik", "parse_answer", "normalize_answer", "build_prompt",
           "target_string", "TEMPLATES"]
