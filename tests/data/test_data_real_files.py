"""Counts on the real data sets in ../shared/data (never copied into the repo); skipped when absent."""
from pathlib import Path

import pytest

from jmlr.data import load_qa, load_qa_corpus

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def _need(rel):
    p = DATA / rel
    if not p.exists():
        pytest.skip(f"real data not present at {p} (only on the maintainers' machine)")
    return p


def test_medqa_us_4options_test():
    qa = load_qa("medqa", _need("medqa/us_4options_test.jsonl"))
    assert len(qa) == 1273
    assert all(len(q.options) == 4 and q.answer in q.options for q in qa)


def test_medmcqa_dev():
    path = _need("medmcqa/dev.json")
    qa = load_qa("medmcqa", path)
    assert len(qa) == 4183
    with_exp = [q for q in qa if q.gold_passage_ids]
    assert len(with_exp) == 2206
    corpus = load_qa_corpus("medmcqa", path)
    assert len(corpus) == 2206 and all(g in corpus for q in with_exp for g in q.gold_passage_ids)


def test_mmlu_medical_folder():
    qa = load_qa("mmlu", _need("mmlu_medical"))
    assert len(qa) == 1089
    assert len({q.metadata["subject"] for q in qa}) == 6


def test_pubmedqa_pqal():
    path = _need("pubmedqa/ori_pqal.json")
    qa = load_qa("pubmedqa", path)
    assert len(qa) == 1000
    assert {q.answer for q in qa} == {"A", "B", "C"}
    corpus = load_qa_corpus("pubmedqa", path)
    assert len(corpus) == sum(len(q.gold_passage_ids) for q in qa)
    split = DATA / "pubmedqa" / "test_ground_truth.json"
    if split.exists():
        assert len(load_qa("pubmedqa", path, split_file=split)) == 500
