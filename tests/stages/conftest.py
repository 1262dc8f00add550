"""Fixtures for the stage-recipe tests: a fresh tiny reader per test (training mutates it), small QA data."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def _tiny_loaded(tiny_reader_dir):
    from jmlr.reader import Reader

    return Reader.from_pretrained(tiny_reader_dir, max_length=256)


@pytest.fixture
def reader(_tiny_loaded):
    """A fresh Reader over the session's tiny random Llama (SmolLM2 tokenizer), fp32, plain template: a copy
    of the weights per test, since training changes them."""
    import copy

    import torch

    from jmlr.reader import Reader

    torch.manual_seed(0)
    return Reader(copy.deepcopy(_tiny_loaded.model), _tiny_loaded.tokenizer, max_length=256)


@pytest.fixture
def mcqs():
    from jmlr.data import QAExample

    opts = {"A": "Alpharin", "B": "Betazole", "C": "Gammacin", "D": "Deltamab"}
    return [QAExample(id=f"q{i}", question=f"Which drug treats condition number {i}?", options=opts,
                      answer="ABCD"[i % 4], gold_passage_ids=[f"p{i}"]) for i in range(6)]


@pytest.fixture
def corpus():
    from jmlr.data import Corpus, Passage

    names = ["Alpharin", "Betazole", "Gammacin", "Deltamab"]
    return Corpus([Passage(f"p{i}", f"Condition number {i} is treated with {names[i % 4]}, given orally twice a day "
                                    f"for ten days in adults; the usual dose is {10 * (i + 1)} mg.", title=f"Condition {i}")
                   for i in range(6)])
