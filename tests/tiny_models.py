"""Tiny random models built from configs (never from a hub), with the bundled real tokenizers.

The encoder is a 2-layer BERT with the MiniLM tokenizer; the reader a 2-layer Llama with the SmolLM2 tokenizer.
"""
from __future__ import annotations

from pathlib import Path


def make_tiny_encoder(folder: str | Path, hidden: int = 32, seed: int = 0) -> str:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from jmlr.models import resolve

    folder = Path(folder)
    if (folder / "config.json").is_file():
        return str(folder)
    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(resolve("minilm"))
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=hidden * 2, max_position_embeddings=256)
    BertModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def make_tiny_reader(folder: str | Path, hidden: int = 32, seed: int = 0) -> str:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from jmlr.models import resolve

    folder = Path(folder)
    if (folder / "config.json").is_file():
        return str(folder)
    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(resolve("smollm2-135m"))
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=hidden * 2, max_position_embeddings=1024,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)
