"""Shared test setup: offline always; tiny random models are built by the tests themselves."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory):
    """A 2-layer random BERT (MiniLM tokenizer) saved as an HF folder."""
    from tiny_models import make_tiny_encoder

    return make_tiny_encoder(tmp_path_factory.mktemp("tiny-encoder"))


@pytest.fixture(scope="session")
def tiny_reader_dir(tmp_path_factory):
    """A 2-layer random Llama (SmolLM2 tokenizer) saved as an HF folder."""
    from tiny_models import make_tiny_reader

    return make_tiny_reader(tmp_path_factory.mktemp("tiny-reader"))
