"""Fixtures of the multi-rank tests."""
import pytest


@pytest.fixture(scope="session")
def tiny_encoder_nodrop_dir(tmp_path_factory):
    """The tiny random BERT of ``tiny_bert_dir`` (same weights) with dropout off: a step over 4 questions on one
    process and the same questions split over ranks and micro-batches draw different dropout masks, so only a
    dropout-free model can match."""
    from tiny_models import make_tiny_bert

    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert-nodrop"), dropout=False)
