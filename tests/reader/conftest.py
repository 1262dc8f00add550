"""Fixtures for the reader tests: a tiny byte-level BPE tokenizer trained here and a tiny random Llama.

Nothing is downloaded: the tokenizer is trained on a few sentences written for the tests, the model is built
from a config. The tokenizer deliberately never sees " E" after a space, so the letter " E" takes two tokens
(exercising the multi-token path of ``score_options``), while " A".." D" are single tokens.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import pytest

SENTENCES = [
    "Question: Which drug is used to treat a fever in a child? Options: A. Aspirin B. Heparin C. Paracetamol "
    "D. Warfarin Correct Answer: C",
    "Reference [1]: Paracetamol lowers fever and treats mild pain. Reference [2]: Heparin is an anticoagulant.",
    "Question: What organ produces insulin? Options: A. Liver B. Pancreas C. Kidney D. Spleen Answer: B",
    "The patient presents with chest pain, shortness of breath and a rapid heart rate.",
    "Answer with the letter of the correct option. The answer is A. The answer is B. The answer is C. D",
    "Use the references to answer the multiple-choice medical question. Reply with the letter.",
]

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass
class Ex:
    """A stand-in for jmlr.data.QAExample (the reader only needs these attributes)."""

    question: str
    options: dict
    answer: str | None
    id: str = "ex"
    answer_text: str | None = None
    gold_passage_ids: list = field(default_factory=list)


def _train_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=420, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(SENTENCES * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>",
                                   additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    fast.chat_template = CHAT_TEMPLATE
    return fast


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A fresh copy per use would be slow; tests that mutate it must restore what they change."""
    return _train_tokenizer()


def make_model(vocab_size: int, seed: int = 0, hidden: int = 32):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=2 * hidden, max_position_embeddings=2048,
                      initializer_range=0.2, tie_word_embeddings=False, bos_token_id=None, eos_token_id=0,
                      pad_token_id=None)
    model = LlamaForCausalLM(cfg)
    model.eval()
    return model


@pytest.fixture
def tiny_model(tiny_tokenizer):
    return make_model(len(tiny_tokenizer))


@pytest.fixture
def reader(tiny_model, tiny_tokenizer):
    from jmlr.reader import Reader

    return Reader(tiny_model, tiny_tokenizer, template="jmlr", max_length=512)


@pytest.fixture
def examples():
    return [
        Ex("Which drug treats a fever in a child?",
           {"A": "Aspirin", "B": "Heparin", "C": "Paracetamol", "D": "Warfarin"}, "C", id="q1"),
        Ex("What organ produces insulin?", {"A": "Liver", "B": "Pancreas", "C": "Kidney"}, "B", id="q2"),
        Ex("The patient presents with chest pain, shortness of breath and a rapid heart rate. Which drug?",
           {"A": "Heparin", "B": "Aspirin", "C": "Paracetamol", "D": "Pancreas"}, "A", id="q3"),
    ]


@pytest.fixture
def passages():
    return [
        ["Paracetamol lowers fever.", "Heparin is an anticoagulant used for clots in the heart.", "Insulin."],
        ["The pancreas produces insulin and the liver stores it as a reference.", "A kidney.",
         "Aspirin treats pain and fever in adults but not in a child."],
        ["Chest pain.", "The patient presents with a rapid heart rate.", "Warfarin is an anticoagulant."],
    ]
