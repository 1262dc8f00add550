"""Shared test setup: offline always; tiny random models are built by the tests themselves (tests/tiny_models.py)."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory):
    """A 2-layer random BERT with MiniLM's real tokenizer saved as an HF folder (tiny_models.make_tiny_bert).
    Not what ``jmlr.retriever.testing.tiny_encoder_dir`` builds (a ~200-word vocabulary)."""
    from tiny_models import make_tiny_bert

    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_reader_dir(tmp_path_factory):
    """A 2-layer random Llama with SmolLM2's tokenizer saved as an HF folder (tiny_models.make_tiny_reader)."""
    from tiny_models import make_tiny_reader

    return make_tiny_reader(tmp_path_factory.mktemp("tiny-reader"))
