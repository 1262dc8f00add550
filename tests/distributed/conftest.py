"""Fixtures of the multi-rank tests."""
import pytest


@pytest.fixture(scope="session")
def tiny_encoder_nodrop_dir(tiny_encoder_dir, tmp_path_factory):
    """The tiny random BERT with dropout off: a step over 4 questions on one process and the same questions
    split over ranks and micro-batches draw different dropout masks, so only a dropout-free model can match."""
    from transformers import AutoModel, AutoTokenizer

    out = tmp_path_factory.mktemp("tiny-encoder-nodrop")
    AutoModel.from_pretrained(tiny_encoder_dir, hidden_dropout_prob=0.0,
                              attention_probs_dropout_prob=0.0).save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_encoder_dir).save_pretrained(out)
    return str(out)
