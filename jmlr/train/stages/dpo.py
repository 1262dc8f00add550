"""Direct Preference Optimization on {prompt, chosen, rejected} pairs (standing in for ChiMed-GPT's RLHF stage).

For a prompt ``x`` with a preferred response ``y_c`` and a dispreferred one ``y_r``, the loss is
(Rafailov et al., 2023, "Direct Preference Optimization: Your Language Model is Secretly a Reward Model")::

    L = -log sigmoid( beta * [ (log pi(y_c|x) - log ref(y_c|x)) - (log pi(y_r|x) - log ref(y_r|x)) ] )

with ``log pi(y|x)`` the SUM of the response tokens' log-probabilities under the trained policy and ``ref`` a
frozen reference model. ``label_smoothing = eps > 0`` gives the conservative variant
``(1-eps) * L(z) + eps * L(-z)``. The implicit rewards ``beta * (log pi - log ref)`` are logged, with the
reward accuracy (chosen reward > rejected reward) and the margin.

The reference is, by default, the policy as it is before training. Its log-probabilities are computed ONCE,
before the first step, for exactly the pairs and batches the step budget will use, so no second copy of the
model is held in memory during training (with ``ref_model`` set, that model is loaded, scored and freed).
At step 1 the policy equals the reference and the loss is ``log 2`` exactly.

This is our own compact implementation (trl is not a dependency); ``tests/stages/test_dpo.py`` checks the loss
against the formula and the sequence log-probabilities against a full-logits computation.

Python::

    from jmlr.train.stages import DPOConfig, run_dpo, PreferencePair
    cfg = DPOConfig(output_dir="runs/dpo"); cfg.model.model = "runs/sft/model"; cfg.beta = 0.1
    summary = run_dpo(cfg, pairs=[PreferencePair("Is X safe in pregnancy?", "No: ...", "Yes, always.")])

CLI: ``jmlr dpo --config configs/stages/dpo.yaml data.pairs=prefs.jsonl``.
"""
from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from jmlr.core.fields import config_field as _f
from jmlr.reader.prefix import PackedBatch, pack_shared_prefix, packed_forward, supports_packing
from jmlr.core.precision import resolve_precision
from jmlr.data import DataFormatError
from jmlr.data.hf import is_hf_dataset, records
from jmlr.train.loop import make_accelerator

from .batching import IGNORE_INDEX, ScheduledBatches, StepBatch, epoch_batches, right_pad, sequence_logps
from .config import StageModelConfig, StageOptimConfig, StageRunConfig, save_stage_config
from .data_io import iter_json_lines, load_reader, seed_everything
from .engine import StageRun, holds_run_folder, resume_state, train_loop
from .sft import EncodedSFT, SFTExample, encode_sft, format_instruction

__all__ = ["DPOConfig", "DPODataConfig", "PreferencePair", "load_preferences", "preferences_from_hf", "dpo_loss",
           "encode_pairs",
           "run_dpo", "dpo"]

_PAIR = "a preference record {prompt, chosen, rejected}"


@dataclass
class DPODataConfig:
    """Where the preference pairs come from and how prompts are rendered."""

    pairs: str = _f("", "preference JSONL {prompt, chosen, rejected} (required)")
    raw_prompt: bool = _f(False, "use prompts verbatim; False renders them like SFT instructions with the "
                                 "reader's template (a chat turn for template=chat)")
    add_eos: bool = _f(True, "append the EOS token to chosen and rejected responses")
    max_examples: int = _f(0, "use at most this many pairs (0 = all)")


@dataclass
class DPOConfig(StageRunConfig):
    """``jmlr dpo``: Direct Preference Optimization against a frozen reference."""

    output_dir: str = _f("runs/dpo", "run folder: metrics.jsonl, summary.json, config.yaml, model/, checkpoints/")
    beta: float = _f(0.1, "DPO temperature beta: how far the policy may move from the reference")
    label_smoothing: float = _f(0.0, "conservative DPO: probability that a preference label is flipped (0..0.5)")
    ref_model: str = _f("", "reference model (alias/folder); '' = the policy before training")
    shared_prefix: bool = _f(True, "score chosen and rejected after ONE pass of their shared prompt (packed rows "
                                   "with a block mask, jmlr.reader.prefix); False = two full sequences per pair")
    model: StageModelConfig = field(default_factory=StageModelConfig, metadata={"help": "the policy to train"})
    data: DPODataConfig = field(default_factory=DPODataConfig, metadata={"help": "preference pairs"})
    optim: StageOptimConfig = field(default_factory=lambda: StageOptimConfig(lr=1e-6, batch_size=2),
                                    metadata={"help": "optimisation"})


@dataclass(frozen=True)
class PreferencePair:
    """A prompt with a preferred (``chosen``) and a dispreferred (``rejected``) response."""

    prompt: str
    chosen: str
    rejected: str
    id: str = ""


def load_preferences(path) -> list[PreferencePair]:
    """Read ``{prompt, chosen, rejected}`` JSONL (or a JSON array); errors name the file and the line."""

    out = []
    for i, (where, rec) in enumerate(iter_json_lines(path, _PAIR)):
        vals = []
        for k in ("prompt", "chosen", "rejected"):
            v = rec.get(k)
            if not isinstance(v, str) or not v.strip():
                raise DataFormatError(path, where, f"field {k!r} is {v!r}; expected a non-empty text ({_PAIR})")
            vals.append(v)
        if vals[1].strip() == vals[2].strip():
            raise DataFormatError(path, where, "chosen and rejected are the same text; expected two different responses")
        out.append(PreferencePair(*vals, id=str(rec.get("id", f"pair-{i}"))))
    return out


def preferences_from_hf(dataset) -> list[PreferencePair]:
    """Preference pairs from a ``datasets.Dataset`` with ``prompt``, ``chosen`` and ``rejected`` text columns."""

    out = []
    for i, (where, rec) in enumerate(records(dataset, {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected",
                                                       "id": "id"}, optional=("id",))):
        for k in ("prompt", "chosen", "rejected"):
            if not isinstance(rec.get(k), str) or not rec[k].strip():
                raise DataFormatError(None, where, f"column {k!r} is {rec.get(k)!r}; expected a non-empty text ({_PAIR})")
        if rec["chosen"].strip() == rec["rejected"].strip():
            raise DataFormatError(None, where, "chosen and rejected are the same text; expected two different responses")
        out.append(PreferencePair(rec["prompt"], rec["chosen"], rec["rejected"], id=str(rec.get("id") or f"pair-{i}")))
    return out


def dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float = 0.1,
             label_smoothing: float = 0.0):
    """The DPO loss per pair, and the implicit rewards.

    Args:
        policy_chosen, policy_rejected: ``(B,)`` summed log-probs of the responses under the policy (with grad).
        ref_chosen, ref_rejected: ``(B,)`` the same under the frozen reference.
        beta: temperature.
        label_smoothing: ``eps`` of conservative DPO (0 = standard DPO).

    Returns:
        ``(losses (B,), chosen_rewards (B,), rejected_rewards (B,))`` with
        ``losses = -(1-eps) log sigmoid(z) - eps log sigmoid(-z)``,
        ``z = beta * ((pc - rc) - (pr - rr))`` and rewards ``beta * (p - r)`` (detached).

    >>> import torch
    >>> l, _, _ = dpo_loss(torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0]), 0.5)
    >>> round(float(l), 4)   # -log sigmoid(0.5 * (1 - (-1)))
    0.3133
    """
    import torch.nn.functional as F

    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    chosen_ratio = policy_chosen - ref_chosen  # (B,)
    rejected_ratio = policy_rejected - ref_rejected  # (B,)
    z = beta * (chosen_ratio - rejected_ratio)  # (B,)
    losses = -(1.0 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)
    return losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


@dataclass
class EncodedPair:
    chosen: EncodedSFT
    rejected: EncodedSFT
    id: str


def encode_pairs(pairs: Sequence[PreferencePair], reader, raw_prompt: bool = False,
                 add_eos: bool = True) -> tuple[list[EncodedPair], Counter]:
    """Tokenize pairs like SFT pairs (labels on the response only); pairs that do not fit are skipped."""
    sft_c, sft_r = [], []
    for p in pairs:
        if raw_prompt:
            prompt, lead = p.prompt, ""
        else:
            prompt, lead = format_instruction(p.prompt, "", reader.template, reader.tokenizer)
        sft_c.append(SFTExample(prompt, lead + p.chosen.strip(), p.id))
        sft_r.append(SFTExample(prompt, lead + p.rejected.strip(), p.id))
    enc_c, cnt_c = encode_sft(sft_c, reader, add_eos=add_eos)
    enc_r, cnt_r = encode_sft(sft_r, reader, add_eos=add_eos)
    keep_c = {e.id: e for e in enc_c}
    keep_r = {e.id: e for e in enc_r}
    out = [EncodedPair(keep_c[p.id], keep_r[p.id], p.id) for p in pairs if p.id in keep_c and p.id in keep_r]
    counts = Counter(skipped_too_long=len(pairs) - len(out),
                     response_truncated=cnt_c["response_truncated"] + cnt_r["response_truncated"])
    return out, counts


def _tensors(rows: Sequence[EncodedPair], pad_id: int) -> dict:
    """Chosen rows then rejected rows in ONE right-padded batch: ``(2B, L)``."""
    seqs = [r.chosen for r in rows] + [r.rejected for r in rows]
    return right_pad([s.input_ids for s in seqs], [s.labels for s in seqs], pad_id)


def _split(e: EncodedSFT) -> tuple[list[int], list[int]]:
    """(prompt ids, response ids) of an encoded pair: the response is where the labels start."""
    first = next(i for i, lab in enumerate(e.labels) if lab != IGNORE_INDEX)
    return list(e.input_ids[:first]), list(e.input_ids[first:])


def _packed(rows: Sequence[EncodedPair], pad_id: int, mask_dtype) -> PackedBatch | None:
    """One packed row per pair, ``prompt | chosen | rejected`` (see :mod:`jmlr.reader.prefix`), or ``None``
    when a pair's two prompts were tokenized differently (then the batch runs as full sequences)."""
    prompts, conts = [], []
    for r in rows:
        (pc, c), (pr, rj) = _split(r.chosen), _split(r.rejected)
        if pc != pr or not pc:
            return None
        prompts.append(pc)
        conts.append([c, rj])
    return pack_shared_prefix(prompts, conts, pad_id, mask_dtype=mask_dtype)


def _pair_logps(model, rows: Sequence[EncodedPair], pad_id: int, shared_prefix: bool):
    """``(chosen (B,), rejected (B,), tokens computed)`` log-probs of the responses under ``model``."""
    p = next(model.parameters())
    packed = _packed(rows, pad_id, p.dtype) if shared_prefix else None
    if packed is not None:
        logp = packed_forward(model, packed, 2)  # (B, 2)
        return logp[:, 0], logp[:, 1], int(packed.tokens.numel() + sum(len(_split(r.chosen)[0]) for r in rows))
    t = {k: v.to(p.device) for k, v in _tensors(rows, pad_id).items()}
    logp, _ = sequence_logps(model, t["input_ids"], t["attention_mask"], t["labels"])  # (2B,)
    B = len(rows)
    return logp[:B], logp[B:], int(t["attention_mask"].sum())


def _schedule(n: int, cfg: DPOConfig, world: int = 1) -> list[tuple[list[int], float]]:
    """The exact global micro-batches (indices, epoch) the step budget will consume (``batch_size`` pairs per
    rank each)."""
    total = cfg.optim.steps * cfg.optim.grad_accum
    out = []
    for idx, epoch in itertools.islice(epoch_batches(n, cfg.optim.batch_size * world, cfg.seed), total):
        out.append((idx, epoch))
        if cfg.optim.epochs and epoch >= cfg.optim.epochs and len(out) % cfg.optim.grad_accum == 0:
            break
    return out


def _reference_logps(model, enc: Sequence[EncodedPair], schedule, pad_id: int, precision: str, device,
                     progress: bool, shared_prefix: bool = True) -> tuple[dict[int, tuple[float, float]], int]:
    """Reference log-probs ``{pair index: (chosen, rejected)}`` for the scheduled batches, and tokens read."""
    import torch
    from tqdm.auto import tqdm

    ref: dict[int, tuple[float, float]] = {}
    tokens = 0
    was_training = model.training
    model.eval()

    autocast = resolve_precision(precision, device).autocast(device)
    todo, seen = [], set()
    for idx, _ in schedule:  # score each pair once, in the first training batch that holds it
        if any(i not in seen for i in idx):
            todo.append(idx)
            seen.update(idx)
    with torch.no_grad(), autocast:
        for idx in tqdm(todo, desc="dpo reference", disable=not progress, leave=False):
            chosen, rejected, n = _pair_logps(model, [enc[i] for i in idx], pad_id, shared_prefix)
            for j, i in enumerate(idx):
                ref.setdefault(i, (float(chosen[j]), float(rejected[j])))
            tokens += n
    model.train(was_training)
    return ref, tokens


@holds_run_folder
def run_dpo(cfg: DPOConfig, reader=None, pairs: Sequence[PreferencePair] | None = None,
            progress: bool = True) -> dict:
    """DPO as configured; returns the summary (also in ``output_dir/summary.json``).

    Args:
        cfg: a :class:`DPOConfig`.
        reader: the policy :class:`~jmlr.reader.Reader` (default: loaded from ``cfg.model``).
        pairs: train on these pairs instead of ``cfg.data.pairs`` (or on a ``datasets.Dataset``, see
            :func:`preferences_from_hf`).
        progress: show tqdm bars.
    """
    import torch


    seed_everything(cfg.seed)
    if is_hf_dataset(pairs):
        pairs = preferences_from_hf(pairs)
    if pairs is None:
        if not cfg.data.pairs:
            raise ValueError("DPO needs preference pairs: set data.pairs to a {prompt, chosen, rejected} JSONL")
        pairs = load_preferences(cfg.data.pairs)
    pairs = list(pairs)
    if cfg.data.max_examples:
        pairs = pairs[: cfg.data.max_examples]
    ids = [p.id for p in pairs]
    if len(set(ids)) != len(ids):  # ids key the encoded pairs: make them unique
        pairs = [PreferencePair(p.prompt, p.chosen, p.rejected, f"{p.id}#{i}") for i, p in enumerate(pairs)]
    dpo_loss(torch.zeros(1), torch.zeros(1), torch.zeros(1), torch.zeros(1), cfg.beta, cfg.label_smoothing)  # check args
    reader = reader if reader is not None else load_reader(cfg.model)
    enc, counts = encode_pairs(pairs, reader, raw_prompt=cfg.data.raw_prompt, add_eos=cfg.data.add_eos)
    if not enc:
        raise ValueError(f"no preference pair fits in max_length={reader.max_length}")
    pad = reader.tokenizer.pad_token_id if reader.tokenizer.pad_token_id is not None else 0
    acc = make_accelerator(device_placement=False)
    schedule = _schedule(len(enc), cfg, acc.num_processes)
    shared_prefix = cfg.shared_prefix and supports_packing(reader.model)

    # the frozen reference: log-probs computed once, before the policy moves (a resumed run reads them back)
    saved = resume_state(cfg)
    if saved is not None and "dpo_reference" in saved:
        ref = {i: (float(c), float(r)) for i, (c, r) in enumerate(saved["dpo_reference"].tolist()) if c == c}
        ref_tokens, n_params_ref = int(saved["dpo_reference_tokens"]), int(saved["dpo_reference_params"])
    else:
        ref, ref_tokens, n_params_ref = _reference(cfg, reader, enc, schedule, pad, shared_prefix, progress)
    table = torch.full((len(enc), 2), float("nan"), dtype=torch.float64)  # (pairs, 2): NaN = not scheduled
    for i, (c, r) in ref.items():
        table[i, 0], table[i, 1] = c, r

    def collate(idx: list[int]) -> StepBatch:
        rows = [enc[i] for i in idx]
        n_tok = (sum(len(r.chosen.input_ids) + len(_split(r.rejected)[1]) for r in rows) if shared_prefix
                 else sum(len(r.chosen.input_ids) + len(r.rejected.input_ids) for r in rows))
        t = {"rows": idx, "ref_chosen": torch.tensor([ref[i][0] for i in idx]),
             "ref_rejected": torch.tensor([ref[i][1] for i in idx])}
        return StepBatch(t, n_units=len(idx), n_tokens=n_tok)

    def loss_fn(model, t: dict):
        chosen, rejected, _ = _pair_logps(model, [enc[i] for i in t["rows"]], pad, shared_prefix)  # (B,) each
        losses, rc, rr = dpo_loss(chosen.float(), rejected.float(), t["ref_chosen"], t["ref_rejected"],
                                  cfg.beta, cfg.label_smoothing)  # (B,)
        stats = {"reward_acc": float((rc > rr).float().mean()), "reward_margin": float((rc - rr).mean()),
                 "chosen_reward": float(rc.mean()), "rejected_reward": float(rr.mean())}
        return losses.sum(), stats

    save_stage_config(cfg, cfg.output_dir)
    run = StageRun("dpo", reader, ScheduledBatches(schedule, collate), loss_fn,
                   extra_flops=lambda: 2.0 * n_params_ref * ref_tokens,
                   extra_summary={"pairs": len(enc), "reference_tokens": ref_tokens, "beta": cfg.beta,
                                  "reference": cfg.ref_model or "initial policy", **dict(counts)},
                   extra_state={"dpo_reference": table, "dpo_reference_tokens": ref_tokens,
                                "dpo_reference_params": n_params_ref},
                   accelerator=acc)
    return train_loop(cfg, run, progress=progress)


def _reference(cfg: DPOConfig, reader, enc, schedule, pad: int, shared_prefix: bool, progress: bool):
    """``(reference log-probs {pair: (chosen, rejected)}, tokens read, reference parameters)`` of the frozen
    reference: ``cfg.ref_model`` (loaded, scored, freed) or the policy as it is now."""
    if cfg.ref_model:
        ref_reader = load_reader(StageModelConfig(model=cfg.ref_model, template=reader.template,
                                                  max_length=reader.max_length, device=str(reader.device),
                                                  trust_remote_code=cfg.model.trust_remote_code))
        if len(ref_reader.tokenizer) != len(reader.tokenizer):
            raise ValueError(f"ref_model {cfg.ref_model!r} has a different vocabulary ({len(ref_reader.tokenizer)} "
                             f"tokens vs {len(reader.tokenizer)}); DPO needs the same tokenizer")
        ref_model = ref_reader.model
    else:
        ref_model = reader.model
    n_params_ref = sum(p.numel() for p in ref_model.parameters())
    ref, ref_tokens = _reference_logps(ref_model, enc, schedule, pad, cfg.optim.precision, reader.device, progress,
                                       shared_prefix)
    if cfg.ref_model:
        del ref_model, ref_reader
    return ref, ref_tokens, n_params_ref


dpo = run_dpo
