"""The tiny random models of the tests, all built here from configs (never from a hub).

Two kinds of tiny encoder exist, and their names say which is which:

* :func:`make_tiny_bert` (fixture ``tiny_bert_dir``): a 2-layer random BERT with the bundled MiniLM's real
  tokenizer (30k WordPiece vocabulary), saved as a plain HF folder, for tests that train on real text;
* :func:`tiny_encoder_dir` (re-exported from the public :mod:`jmlr.retriever.testing`, which the docs and
  examples use): a random BERT with a ~200-word WordPiece vocabulary, saved with the sentence-transformers
  layout; :func:`random_texts` draws sentences over that vocabulary.

The reader is :func:`make_tiny_reader` (fixture ``tiny_reader_dir``): a 2-layer random Llama with SmolLM2's
tokenizer; :func:`tiny_llama` builds the same architecture in memory for any vocabulary size.
"""
from __future__ import annotations

from pathlib import Path

from jmlr.retriever.testing import WORDS, random_texts, tiny_encoder_dir, tiny_vocab

__all__ = ["WORDS", "make_tiny_bert", "make_tiny_encoder", "make_tiny_reader", "random_texts", "tiny_encoder_dir",
           "tiny_llama", "tiny_vocab"]


def make_tiny_bert(folder: str | Path, hidden: int = 32, seed: int = 0, dropout: bool = True) -> str:
    """A 2-layer random BERT (with its pooler) and MiniLM's tokenizer at ``folder``; an existing one is reused.

    ``dropout=False`` sets both dropout probabilities to 0, for tests that compare a step split over ranks or
    micro-batches with the single-process step (different splits draw different dropout masks)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from jmlr.models import resolve

    folder = Path(folder)
    if (folder / "config.json").is_file():
        return str(folder)
    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(resolve("minilm"))
    p = {} if dropout else {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=hidden * 2, max_position_embeddings=256, **p)
    BertModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


make_tiny_encoder = make_tiny_bert  # the earlier name


def tiny_llama(vocab_size: int, hidden: int = 32, seed: int = 0, **config):
    """A 2-layer random ``LlamaForCausalLM`` (4 heads, 2 KV heads, MLP 2x hidden) in eval mode; ``config``
    overrides LlamaConfig fields."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(**{"vocab_size": vocab_size, "hidden_size": hidden, "num_hidden_layers": 2,
                         "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": hidden * 2,
                         "max_position_embeddings": 256, **config})
    return LlamaForCausalLM(cfg).eval()


def make_tiny_reader(folder: str | Path, hidden: int = 32, seed: int = 0) -> str:
    """:func:`tiny_llama` with SmolLM2's tokenizer (tied embeddings) saved at ``folder``; an existing one is reused."""
    from transformers import AutoTokenizer

    from jmlr.models import resolve

    folder = Path(folder)
    if (folder / "config.json").is_file():
        return str(folder)
    tok = AutoTokenizer.from_pretrained(resolve("smollm2-135m"))
    model = tiny_llama(len(tok), hidden, seed, max_position_embeddings=1024, tie_word_embeddings=True,
                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)
