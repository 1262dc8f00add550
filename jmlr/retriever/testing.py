"""Tiny random encoders and texts for tests and examples (no hub, no download).

>>> from jmlr.retriever.testing import tiny_encoder_dir, random_texts
>>> path = tiny_encoder_dir(tmp_path / "enc")                 # doctest: +SKIP
>>> dual = DualEncoder.from_pretrained(path)                    # doctest: +SKIP
"""
from __future__ import annotations

import random
from pathlib import Path

from .st_layout import write_sentence_transformers_layout

WORDS = (
    "patient fever cough pain chest heart lung liver kidney blood pressure drug dose infection virus "
    "bacteria antibiotic insulin glucose diabetes cancer tumor cell gene protein enzyme receptor acid "
    "artery vein nerve brain muscle bone skin eye ear child adult woman man pregnancy birth treatment "
    "therapy surgery diagnosis symptom sign test scan biopsy serum urine level high low acute chronic "
    "severe mild first line choice best most common cause effect risk factor vitamin iron calcium "
    "sodium potassium hormone thyroid adrenal cortisol steroid aspirin heparin warfarin penicillin "
    "anemia asthma stroke shock sepsis edema rash ulcer fracture lesion mass node gland duct valve "
    "the of and in with to for by is are was on at from which after before during"
).split()


def tiny_vocab() -> list[str]:
    """A small WordPiece vocabulary: special tokens, :data:`WORDS`, letters and ``##`` letters, digits."""
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    return (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "?", "-"] + list(WORDS) + letters
            + ["##" + c for c in letters] + [str(d) for d in range(10)] + ["##" + str(d) for d in range(10)])


def tiny_encoder_dir(path, *, hidden_size: int = 32, num_layers: int = 2, num_heads: int = 2,
                     pooling: str = "mean", normalize: bool = True, max_length: int = 64, seed: int = 0,
                     initializer_range: float = 0.02, sentence_transformers: bool = True) -> Path:
    """Build a random BERT encoder + WordPiece tokenizer folder at ``path`` and return it.

    With ``sentence_transformers=True`` the folder also carries modules.json, the Pooling config and
    (if ``normalize``) a Normalize module, like a real sentence-transformers model.
    """
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    vocab = tiny_vocab()
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True,
                            model_max_length=max_length)
    if len(tok) != len(vocab) or tok.tokenize("patient fever") != ["patient", "fever"]:
        raise RuntimeError("this transformers version did not build the tiny WordPiece vocabulary")
    tok.save_pretrained(path)
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=hidden_size, num_hidden_layers=num_layers,
                     num_attention_heads=num_heads, intermediate_size=2 * hidden_size,
                     max_position_embeddings=max(128, max_length), hidden_dropout_prob=0.0,
                     initializer_range=initializer_range,
                     attention_probs_dropout_prob=0.0)
    model = BertModel(cfg, add_pooling_layer=False)
    model.save_pretrained(path)
    if sentence_transformers:
        write_sentence_transformers_layout(path, dim=hidden_size, pooling=pooling, normalize=normalize,
                                           max_length=max_length)
    return path


def random_texts(n: int, *, seed: int = 0, min_words: int = 4, max_words: int = 24) -> list[str]:
    """``n`` random sentences over :data:`WORDS` (deterministic for a seed, all distinct)."""
    rng = random.Random(seed)
    out, seen = [], set()
    while len(out) < n:
        t = " ".join(rng.choice(WORDS) for _ in range(rng.randint(min_words, max_words)))
        if t not in seen:
            seen.add(t)
            out.append(t)
    return out
