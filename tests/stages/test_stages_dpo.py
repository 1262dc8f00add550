"""DPO: the loss equals its formula; the reference is the initial policy (loss log 2 at step 1) or a given model."""
from __future__ import annotations

import json
import math

import pytest
import torch

from jmlr.train.stages import DPOConfig, PreferencePair, dpo_loss, load_preferences, run_dpo
from jmlr.train.stages.dpo import _tensors, encode_pairs
from jmlr.train.stages.batching import sequence_logps


def _formula(pc, pr, rc, rr, beta, eps=0.0):
    z = beta * ((pc - rc) - (pr - rr))
    nls = lambda x: math.log1p(math.exp(-x))  # -log sigmoid(x)
    return (1 - eps) * nls(z) + eps * nls(-z)


@pytest.mark.parametrize("beta,eps", [(0.1, 0.0), (0.5, 0.0), (2.0, 0.0), (0.3, 0.2)])
def test_dpo_loss_equals_formula(beta, eps):
    g = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (-20 * torch.rand(7, generator=g, dtype=torch.float64) for _ in range(4))
    pc.requires_grad_(True)
    losses, chosen_r, rejected_r = dpo_loss(pc, pr, rc, rr, beta, eps)
    for i in range(7):
        want = _formula(float(pc[i].detach()), float(pr[i]), float(rc[i]), float(rr[i]), beta, eps)
        assert abs(float(losses[i].detach()) - want) < 1e-12
    torch.testing.assert_close(chosen_r, beta * (pc.detach() - rc))
    torch.testing.assert_close(rejected_r, beta * (pr - rr))
    # gradient w.r.t. the chosen log-prob: d/dpc = -beta * ((1-eps) * sigmoid(-z) - eps * sigmoid(z))
    losses.sum().backward()
    z = beta * ((pc.detach() - rc) - (pr - rr))
    torch.testing.assert_close(pc.grad, -beta * ((1 - eps) * torch.sigmoid(-z) - eps * torch.sigmoid(z)))


def test_dpo_loss_bad_args():
    z = torch.zeros(1)
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(z, z, z, z, beta=0)
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_loss(z, z, z, z, beta=0.1, label_smoothing=0.7)


PAIRS = [PreferencePair("Is drug X safe in pregnancy?", "No, avoid it.", "Yes, always.", "a"),
         PreferencePair("Dose of drug Y?", "10 mg daily.", "A whole bottle.", "b"),
         PreferencePair("Treat fever in a child?", "Paracetamol by weight.", "Aspirin.", "c")]


def _cfg(tmp_path, name, **kw):
    cfg = DPOConfig(output_dir=str(tmp_path / name))
    cfg.optim.precision, cfg.optim.lr, cfg.optim.schedule, cfg.optim.max_grad_norm = "fp32", 5e-3, "constant", 0.0
    cfg.optim.batch_size, cfg.optim.steps = 3, 8
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def test_run_dpo_starts_at_log2_and_learns(reader, tmp_path):
    s = run_dpo(_cfg(tmp_path, "dpo", beta=0.5), reader=reader, pairs=PAIRS, progress=False)
    assert abs(s["first_loss"] - math.log(2)) < 1e-5  # policy == reference at step 1
    assert s["final_loss"] < s["first_loss"]
    rows = [json.loads(x) for x in (tmp_path / "dpo" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["reward_margin"] == pytest.approx(0.0, abs=1e-5)
    assert rows[-1]["reward_acc"] == 1.0 and rows[-1]["reward_margin"] > 0
    assert s["pairs"] == 3 and s["reference"] == "initial policy"
    assert s["flops_est"] == 6.0 * s["n_params"] * s["tokens"] + 2.0 * s["n_params"] * s["reference_tokens"]


def test_run_dpo_with_separate_reference_matches_formula(tiny_reader_dir, tmp_path):
    """Policy = a perturbed copy; reference = the saved tiny model: the first loss is the formula on both models."""
    from jmlr.reader import Reader

    policy = Reader.from_pretrained(tiny_reader_dir, max_length=256)
    ref = Reader.from_pretrained(tiny_reader_dir, max_length=256)
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        for p in policy.model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    enc, _ = encode_pairs(PAIRS, policy)
    t = _tensors(enc, policy.tokenizer.pad_token_id)
    with torch.no_grad():
        lp_pol, _ = sequence_logps(policy.model, t["input_ids"], t["attention_mask"], t["labels"])
        lp_ref, _ = sequence_logps(ref.model, t["input_ids"], t["attention_mask"], t["labels"])
    want = sum(_formula(float(lp_pol[i]), float(lp_pol[3 + i]), float(lp_ref[i]), float(lp_ref[3 + i]), 0.1)
               for i in range(3)) / 3
    cfg = _cfg(tmp_path, "dpo_ref", beta=0.1, ref_model=tiny_reader_dir)
    cfg.optim.steps = 1
    s = run_dpo(cfg, reader=policy, pairs=PAIRS, progress=False)
    assert s["first_loss"] == pytest.approx(want, abs=1e-4)
    assert abs(want - math.log(2)) > 1e-3  # the test means something: the two models differ


def test_load_preferences(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"prompt": "q", "chosen": "good", "rejected": "bad"}) + "\n")
    assert load_preferences(f) == [PreferencePair("q", "good", "bad", "pair-0")]
    f.write_text(json.dumps({"prompt": "q", "chosen": "good"}) + "\n")
    with pytest.raises(ValueError, match=r"p.jsonl, line 1: field 'rejected'"):
        load_preferences(f)
    f.write_text(json.dumps({"prompt": "q", "chosen": "same", "rejected": "same"}) + "\n")
    with pytest.raises(ValueError, match="same text"):
        load_preferences(f)
    with pytest.raises(ValueError, match="data.pairs"):
        run_dpo(DPOConfig(output_dir=str(tmp_path / "x")), reader=None)


def test_dpo_with_lora_starts_at_log2(reader, tmp_path):
    reader.add_lora({"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]})
    cfg = _cfg(tmp_path, "dpo_lora", beta=0.5)
    cfg.optim.steps = 3
    s = run_dpo(cfg, reader=reader, pairs=PAIRS, progress=False)
    assert abs(s["first_loss"] - math.log(2)) < 1e-5 and s["n_trainable"] < s["n_params"] / 10
    assert s["final_loss"] < s["first_loss"]


def test_shared_prefix_pairs_equal_two_full_sequences(reader):
    """Chosen and rejected after ONE pass of their prompt give the log-probs, and the gradients, of two
    right-padded full sequences."""
    from jmlr.train.stages.dpo import _packed, _pair_logps

    enc, _ = encode_pairs(PAIRS, reader)
    pad = reader.tokenizer.pad_token_id or 0
    assert _packed(enc, pad, torch.float32) is not None  # every pair's prompts tokenize the same
    model = reader.model
    grads = []
    for shared in (True, False):
        model.zero_grad(set_to_none=True)
        c, r, n = _pair_logps(model, enc, pad, shared)
        (c.sum() - 0.5 * r.sum()).backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None})
        if shared:
            packed = (c.detach(), r.detach(), n)
        else:
            full = (c.detach(), r.detach(), n)
    t = _tensors(enc, pad)
    ref, _ = sequence_logps(model, t["input_ids"], t["attention_mask"], t["labels"], full_logits=True)
    torch.testing.assert_close(full[0], ref[:3].detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(packed[0], full[0], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(packed[1], full[1], rtol=1e-5, atol=1e-4)
    assert packed[2] < full[2]  # the prompt ran once per pair, not twice
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 5
    for k in grads[0]:
        torch.testing.assert_close(grads[0][k], grads[1][k], rtol=1e-4, atol=1e-5, msg=k)
    model.zero_grad(set_to_none=True)


def test_dpo_run_is_the_same_with_and_without_shared_prefix(reader, tmp_path):
    import copy

    runs = []
    for shared in (True, False):
        r = copy.deepcopy(reader)
        runs.append(run_dpo(_cfg(tmp_path, f"dpo-{shared}", beta=0.5, shared_prefix=shared), reader=r, pairs=PAIRS,
                            progress=False))
    assert runs[0]["losses"] == pytest.approx(runs[1]["losses"], rel=1e-4, abs=1e-5)
    assert runs[0]["tokens"] < runs[1]["tokens"]
