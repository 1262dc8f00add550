"""The trainer-loss contract: a loss declares what it needs from the reader, the trainer computes exactly that,
hands the loss raw scores (one temperature: retriever.temperature) and logs the loss's own stats."""
import json
import math

import pytest
import torch

from jmlr.losses import LOSSES, JointLoss, ReaderNeeds
from jmlr.train.joint_model import JointModel

from test_trainer import make_trainer

SEEN: list[dict] = []


class LoglikOnlyLoss(JointLoss):
    """A dummy loss that declares only ``loglik`` and records what it was given."""

    name = "loglik_only"

    def __init__(self, temperature: float = 1.0):
        super().__init__()
        self.temperature = temperature

    def forward(self, scores, loglik, **inputs):
        SEEN.append({"scores": scores.detach().clone(), "loglik": loglik, "inputs": set(inputs),
                     "temperature": self.temperature})
        loss = -loglik.mean() + 0.0 * scores.sum()
        self.last_stats = {"loss": loss.detach(), "probe": torch.tensor(7.0), "half": torch.tensor(0.5)}
        return loss


class _Spy:
    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.fn(*args, **kwargs)


def test_a_loss_declaring_only_loglik_gets_exactly_that(tmp_path, tiny_bert_dir, tiny_reader_dir, monkeypatch):
    monkeypatch.setitem(LOSSES, "loglik_only", LoglikOnlyLoss)
    SEEN.clear()
    t = make_trainer(tmp_path / "run", tiny_bert_dir, tiny_reader_dir,
                     ["optim.steps=2", "loss.name=loglik_only", "refresh.every=0", "retriever.temperature=0.2"])
    spies = {m: _Spy(getattr(t.reader, m)) for m in ("answer_loglik", "concat_loglik", "loo_loglik")}
    for m, spy in spies.items():
        monkeypatch.setattr(t.reader, m, spy)
    t.train()
    assert len(SEEN) == 2
    for call in SEEN:
        assert call["inputs"] == set()  # no token log-probs, no reader_nll, no leave-one-out, no generator
        assert call["loglik"].shape == (2, 3)
        # one temperature: the loss holds retriever.temperature and gets the raw scores, cosines of the
        # L2-normalised embeddings (|s| <= 1; divided by 0.2 they would reach 5)
        assert call["temperature"] == 0.2
        assert call["scores"].abs().max() <= 1 + 1e-5
    assert spies["loo_loglik"].calls == 0 and spies["concat_loglik"].calls == 0
    assert spies["answer_loglik"].calls >= 2  # the training steps (evaluation scores options another way)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert len(steps) == 2
    for r in steps:  # the loss's own stats, prefixed; its "loss" is the row's loss
        assert r["loss/probe"] == 7.0 and r["loss/half"] == 0.5 and "loss/loss" not in r


class _StubReader:
    """What JointModel asks of a reader, recorded; log-likelihoods are -(b + k) so that each is known."""

    def __init__(self):
        self.model = torch.nn.Linear(1, 1)
        self.calls = []

    def answer_loglik(self, examples, passages, return_token_logp=False):
        self.calls.append("answer_loglik" + ("+tokens" if return_token_logp else ""))
        B, K = len(passages), len(passages[0])
        ll = -torch.arange(B * K, dtype=torch.float32).view(B, K)
        if return_token_logp:
            return ll, ll[..., None].repeat(1, 1, 2) / 2, torch.ones(B, 2, dtype=torch.bool)
        return ll

    def concat_loglik(self, examples, passages):
        self.calls.append("concat_loglik")
        return -torch.ones(len(passages))

    def loo_loglik(self, examples, passages):
        self.calls.append("loo_loglik")
        return -2 * torch.ones(len(passages), len(passages[0]))


@pytest.mark.parametrize("needs, calls, keys", [
    (ReaderNeeds(), ["answer_loglik"], {"loglik"}),
    (ReaderNeeds(loglik=False, loo_loglik=True), ["loo_loglik"], {"loo_loglik"}),
    (ReaderNeeds(loglik=False, token_logp=True), ["answer_loglik+tokens"], {"token_logp", "token_mask"}),
    (ReaderNeeds(reader_nll=True, generator=True), ["answer_loglik", "concat_loglik"], {"loglik", "reader_nll"}),
])
def test_joint_model_reads_exactly_what_the_loss_needs(needs, calls, keys):
    reader = _StubReader()
    out = JointModel(torch.nn.Module(), reader, needs).read([None, None], [["a", "b", "c"]] * 2)
    assert reader.calls == calls and set(out) == keys
    if "reader_nll" in out:
        assert out["reader_nll"].tolist() == [1.0, 1.0]  # the NLL: minus the concatenated log-likelihood


def test_every_registered_loss_declares_reader_needs():
    for name, cls in LOSSES.items():
        assert isinstance(cls().needs, ReaderNeeds), name


@pytest.mark.parametrize("loss, stats", [
    ("pdist", {"kl", "reader_nll", "target_entropy", "retriever_entropy"}),
    ("jmlr_rank", {"rank", "nll", "pairs", "pair_accuracy"}),
])
def test_the_trainer_logs_the_stats_of_real_losses(tmp_path, tiny_bert_dir, tiny_reader_dir, loss, stats):
    t = make_trainer(tmp_path / "run", tiny_bert_dir, tiny_reader_dir,
                     ["optim.steps=1", f"loss.name={loss}", "refresh.every=0"])
    t.train()
    row = next(json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if "loss" in x)
    assert {k[len("loss/"):] for k in row if k.startswith("loss/")} == stats
    if "retriever_entropy" in stats:  # an entropy over K = 3 candidates
        assert 0.0 <= row["loss/retriever_entropy"] <= math.log(3) + 1e-6
    if "pairs" in stats:  # 3 candidates sampled (num_samples >= K): at most 3 ordered pairs per question
        assert 0.0 <= row["loss/pairs"] <= 3.0
