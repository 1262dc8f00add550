"""Fixtures of the reliability tests (helpers live in ``_reliability.py``; test modules import from there)."""
import pytest

from _reliability import BASE, tiny_data


@pytest.fixture
def make_trainer(tiny_bert_dir, tiny_reader_dir):
    """``make_trainer(out, overrides=(), data=None, cls=JointTrainer)``: a JointTrainer on tiny random models."""
    from jmlr.config import load_config
    from jmlr.reader import Reader
    from jmlr.retriever import DualEncoder
    from jmlr.train.trainer import JointTrainer

    def make(out, overrides=(), data=None, cls=JointTrainer, dev=True):
        cfg = load_config(None, BASE + [f"output_dir={out}", *overrides])
        corpus, qa = data or tiny_data()
        return cls(cfg, DualEncoder.from_pretrained(tiny_bert_dir),
                   Reader.from_pretrained(tiny_reader_dir, max_length=128), corpus, qa, qa[:2] if dev else [],
                   progress=False)

    return make
