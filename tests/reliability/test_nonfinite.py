"""Defect 3: a non-finite step is never applied silently and never checkpointed (optim.nonfinite)."""
import math

import pytest
import torch
from safetensors.torch import load_file

from jmlr.train.trainer import JointTrainer


class NaNAt(JointTrainer):
    """Makes the loss NaN at the optimizer steps in ``nan_steps`` (1-based), so its gradients are NaN."""

    nan_steps: set = set()

    def _micro_step(self, batch):
        loss, stats = super()._micro_step(batch)
        if self.step + 1 in self.nan_steps:
            loss = loss * float("nan")
        return loss, stats


def _weights(folder):
    return load_file(str(folder / "reader" / "model.safetensors"))


def test_a_nonfinite_step_is_skipped_counted_and_logged(make_trainer, tmp_path):
    cls = type("NaNAt2", (NaNAt,), {"nan_steps": {2}})
    t = make_trainer(tmp_path / "run", ["optim.steps=3", "checkpoint_every=1"], cls=cls, dev=False)
    summary = t.train()
    assert summary["nonfinite_skipped"] == 1 and summary["steps"] == 3
    assert [h.get("skipped", 0) for h in t.history] == [0, 1, 0]
    assert all(math.isfinite(h["loss"]) for i, h in enumerate(t.history) if i != 1)
    assert all(torch.isfinite(p).all() for p in t.reader.model.parameters())
    assert all(torch.isfinite(p).all() for p in t.retriever.parameters())
    ck = tmp_path / "run" / "checkpoints"
    w1, w2, w3 = (_weights(ck / f"step-{s}") for s in (1, 2, 3))
    assert all(torch.equal(w1[k], w2[k]) for k in w1), "the skipped step changed no weight"
    assert any(not torch.equal(w2[k], w3[k]) for k in w2), "the next step trained again"


def test_too_many_consecutive_nonfinite_steps_raise(make_trainer, tmp_path):
    from jmlr.train.trainer import NonFiniteError

    cls = type("NaNAll", (NaNAt,), {"nan_steps": {2, 3, 4, 5}})
    t = make_trainer(tmp_path / "run", ["optim.steps=6", "optim.max_nonfinite_skips=2"], cls=cls, dev=False)
    with pytest.raises(NonFiniteError, match=r"3 steps in a row .*step 4.*optim.max_nonfinite_skips=2"):
        t.train()
    assert t.nonfinite_skipped == 3


def test_nonfinite_raise_policy_names_the_step(make_trainer, tmp_path):
    from jmlr.train.trainer import NonFiniteError

    cls = type("NaN1", (NaNAt,), {"nan_steps": {1}})
    t = make_trainer(tmp_path / "run", ["optim.nonfinite=raise", "optim.max_grad_norm=0"], cls=cls, dev=False)
    with pytest.raises(NonFiniteError, match="step 1: loss nan"):
        t.train()


def test_no_checkpoint_is_written_from_nonfinite_weights(make_trainer, tmp_path):
    from jmlr.train.trainer import NonFiniteError

    t = make_trainer(tmp_path / "run", dev=False)
    t.setup()
    with torch.no_grad():
        next(t.reader.model.parameters())[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="refusing to write checkpoint .*step-0.*parameter reader\\."):
        t.save_checkpoint()
    assert not (tmp_path / "run" / "checkpoints").exists() or not any((tmp_path / "run" / "checkpoints").iterdir())
