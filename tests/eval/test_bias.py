"""Bias probe: a scorer rigged to answer differently per group is caught, with the right pair and values."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from jmlr.eval.bias import DEFAULT_GROUPS, DEFAULT_ITEMS, ReaderScaleScorer, bias_report, probe_prompts, run_bias_probe

DIST = {"privately insured": [.1, .1, .2, .3, .3], "covered by Medicaid": [.2, .2, .2, .2, .2],
        "uninsured": [.6, .2, .1, .05, .05]}


def rigged(bodies):
    """Answers uniformly, except for the insurance groups (and one item for the 80-year-old)."""
    out = []
    for b in bodies:
        group = b.split("The patient is ", 1)[1].split(".\n", 1)[0]
        p = DIST.get(group, [.2] * 5)
        if group == "80 years old" and b.startswith("A patient with knee osteoarthritis"):
            p = [.0, .0, .0, .0, 1.0]
        out.append(np.log(np.maximum(p, 1e-12)))
    return np.array(out)


def test_rigged_scorer_finds_the_right_pair():
    rep = run_bias_probe(scorer=rigged)
    assert rep.max_tv["attribute"] == "insurance"
    assert set(rep.max_tv["groups"]) == {"privately insured", "uninsured"}
    assert rep.max_tv["value"] == pytest.approx(0.6, abs=1e-6)
    assert set(rep.max_expected_diff["groups"]) == {"privately insured", "uninsured"}
    assert rep.max_expected_diff["value"] == pytest.approx(3.6 - 1.75, abs=1e-6)
    pairs = {(p["a"], p["b"]): p for p in rep.pairs}
    assert pairs[("privately insured", "covered by Medicaid")]["tv"] == pytest.approx(0.2)
    assert pairs[("covered by Medicaid", "uninsured")]["tv"] == pytest.approx(0.4)
    assert pairs[("a man", "a woman")]["tv"] == pytest.approx(0.0, abs=1e-9)
    # the age effect is on one item only: averaged over 8 items, and found by the per-item view
    tv_age = 0.5 * (0.2 + 0.2 + 0.2 + 0.2 + 0.8) / len(DEFAULT_ITEMS)
    assert pairs[("25 years old", "80 years old")]["tv"] == pytest.approx(tv_age)
    assert rep.per_item["knee"]["attribute"] == "age" and "80 years old" in rep.per_item["knee"]["groups"]
    assert rep.per_item["knee"]["max_tv"] == pytest.approx(0.8)
    assert rep.per_item["cough"]["attribute"] == "insurance"
    assert rep.groups["uninsured"]["expected_score"] == pytest.approx(1.75)
    assert "insurance" in rep.format() and rep.to_dict()["max_tv"] == rep.max_tv


def test_monkeypatched_reader_scorer(monkeypatch, tiny_reader_dir):
    from jmlr.reader import Reader

    reader = Reader.from_pretrained(tiny_reader_dir)
    monkeypatch.setattr(ReaderScaleScorer, "__call__", lambda self, bodies: torch.as_tensor(rigged(bodies)))
    rep = run_bias_probe(reader, groups={"insurance": DEFAULT_GROUPS["insurance"], "sex": DEFAULT_GROUPS["sex"]})
    assert set(rep.max_tv["groups"]) == {"privately insured", "uninsured"}


def test_reader_scorer_on_tiny_model(tiny_reader_dir):
    from jmlr.reader import Reader

    reader = Reader.from_pretrained(tiny_reader_dir)
    groups = {"sex": ("a man", "a woman")}
    bodies = [r[3] for r in probe_prompts(DEFAULT_ITEMS[:2], groups)]
    fast = ReaderScaleScorer(reader)(bodies)  # one forward per prompt (" 1".." 5" share the space token)
    full = ReaderScaleScorer(reader, mode="full")(bodies)  # every answer scored as a full continuation
    assert fast.shape == (4, 5)
    torch.testing.assert_close(torch.softmax(fast, -1), torch.softmax(full, -1), atol=1e-5, rtol=1e-4)
    assert (full < fast).all()  # the full path includes the shared prefix's probability
    rep = run_bias_probe(reader, items=DEFAULT_ITEMS[:2], groups=groups)
    assert 0.0 <= rep.max_tv["value"] <= 1.0 and rep.max_tv["groups"] in (["a man", "a woman"],)
    chat = Reader.from_pretrained(tiny_reader_dir, template="chat")
    assert ReaderScaleScorer(chat)(bodies[:1]).shape == (1, 5)


def test_probe_errors():
    with pytest.raises(ValueError, match="at least two groups"):
        probe_prompts(DEFAULT_ITEMS, {"sex": ("a man",)})
    with pytest.raises(ValueError, match="appears under both"):
        probe_prompts(DEFAULT_ITEMS, {"a": ("x", "y"), "b": ("x", "z")})
    with pytest.raises(ValueError, match="shape"):
        bias_report(np.zeros((3, 5)), [("a", "x", "i")] * 2)
    with pytest.raises(ValueError, match="reader or a scorer"):
        run_bias_probe()
