"""Tiny random sentence-transformers encoders (built from a BertConfig, never from a hub)."""
import pytest


@pytest.fixture(scope="session")
def st_encoder_dir(tmp_path_factory):
    """A 2-layer random BERT saved as a sentence-transformers folder (mean pooling + Normalize)."""
    from jmlr.retriever.testing import tiny_encoder_dir

    return tiny_encoder_dir(tmp_path_factory.mktemp("st-mean"))


@pytest.fixture(scope="session")
def cls_encoder_dir(tmp_path_factory):
    """The same kind of encoder with CLS pooling and no Normalize module."""
    from jmlr.retriever.testing import tiny_encoder_dir

    return tiny_encoder_dir(tmp_path_factory.mktemp("st-cls"), pooling="cls", normalize=False, seed=1)


@pytest.fixture()
def dual(st_encoder_dir):
    from jmlr.retriever import DualEncoder

    return DualEncoder.from_pretrained(st_encoder_dir)


@pytest.fixture(scope="session")
def texts():
    from jmlr.retriever.testing import random_texts

    return random_texts(40, seed=3)
