"""Shared-prefix scoring: one packed forward per question for all of its continuations.

When several continuations share one prompt (the options of a multiple-choice question under cloze scoring),
scoring each as its own sequence computes the prompt, with its K passages, once per option. Here each
question becomes ONE row::

    [pad .. pad | prompt tokens ......... | option 1 | option 2 | option 3 | option 4]

with a block attention mask (every option token sees the whole prompt and the earlier tokens of its own
option, never another option) and position ids that restart at ``len(prompt)`` for every option. So each
option's tokens get exactly the hidden states they get in ``prompt + option`` alone, and the prompt is
computed once: for 4 options after a 350-token prompt, 390 tokens instead of 1,560.

The first token of every option is predicted by the prompt's last position (shared); token ``i > 0`` of an
option by the option's own token ``i - 1``. Only those positions go through the LM head.

The mask is a 4D additive float mask, which transformers passes through unchanged to its ``sdpa`` and
``eager`` attention; models whose attention takes no custom mask (flash-attention's varlen kernels) or whose
forward takes no ``position_ids`` fall back to one sequence per option (:meth:`Reader.score_options`).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import inspect

import torch

__all__ = ["PackedBatch", "pack_shared_prefix", "packed_logp", "packed_forward", "supports_packing",
           "MASKABLE_ATTENTION"]

MASKABLE_ATTENTION = ("sdpa", "eager")
"""Attention implementations that honour a custom 4D mask (the packed layout needs one)."""


class PackedBatch(NamedTuple):
    """Tensors of one packed forward (``n`` rows of length ``L``) and where each continuation token is scored."""

    input_ids: torch.Tensor  # (n, L)
    position_ids: torch.Tensor  # (n, L)
    attention_mask: torch.Tensor  # (n, 1, L, L) additive: 0 where attended, dtype-min elsewhere
    keep: int  # logits of the last ``keep`` positions are needed
    rows: torch.Tensor  # (M,) row of each scored continuation token
    kept_pos: torch.Tensor  # (M,) index into the kept positions of the logits predicting it
    tokens: torch.Tensor  # (M,) the token id scored
    option: torch.Tensor  # (M,) column (continuation index) it belongs to


def pack_shared_prefix(prompts: Sequence[Sequence[int]], conts: Sequence[Sequence[Sequence[int]]], pad_id: int,
                       mask_dtype: torch.dtype = torch.float32) -> PackedBatch:
    """Pack ``prompts[r]`` followed by all of ``conts[r]`` into row ``r`` (left padded to one length)."""
    n = len(prompts)
    if n != len(conts):
        raise ValueError(f"got {n} prompts but {len(conts)} continuation lists")
    lens = []
    for r, (p, cs) in enumerate(zip(prompts, conts)):
        if not p:
            raise ValueError(f"row {r}: the shared prompt is empty; the first continuation token needs a prefix")
        if not cs or any(len(c) == 0 for c in cs):
            raise ValueError(f"row {r}: every row needs at least one non-empty continuation")
        lens.append(len(p) + sum(len(c) for c in cs))
    L = max(lens)
    keep = max(s - len(p) for s, p in zip(lens, prompts)) + 1
    ids = torch.full((n, L), pad_id, dtype=torch.long)
    pos = torch.zeros((n, L), dtype=torch.long)
    seg = torch.full((n, L), -1, dtype=torch.long)  # -1 pad, 0 prompt, j + 1 continuation j
    rows, kept, toks, opt = [], [], [], []
    for r, (p, cs) in enumerate(zip(prompts, conts)):
        o = L - lens[r]
        P = len(p)
        ids[r, o:o + P] = torch.as_tensor(list(p), dtype=torch.long)
        pos[r, o:o + P] = torch.arange(P)
        seg[r, o:o + P] = 0
        last_prompt = o + P - 1
        s = o + P
        for j, c in enumerate(cs):
            T = len(c)
            ids[r, s:s + T] = torch.as_tensor(list(c), dtype=torch.long)
            pos[r, s:s + T] = torch.arange(P, P + T)
            seg[r, s:s + T] = j + 1
            preds = [last_prompt] + list(range(s, s + T - 1))  # position whose logits predict each token
            rows += [r] * T
            kept += [q - (L - keep) for q in preds]
            toks += list(c)
            opt += [j] * T
            s += T
    q_seg, k_seg = seg.unsqueeze(2), seg.unsqueeze(1)  # (n, L, 1), (n, 1, L)
    causal = torch.ones((L, L), dtype=torch.bool).tril()
    allow = causal & (((k_seg == 0) & (q_seg >= 0)) | ((k_seg == q_seg) & (q_seg > 0)))
    allow |= torch.eye(L, dtype=torch.bool)  # padding rows attend to themselves (no all-masked softmax rows)
    mask = torch.zeros((n, 1, L, L), dtype=mask_dtype).masked_fill_(~allow.unsqueeze(1), torch.finfo(mask_dtype).min)
    as_t = lambda x: torch.as_tensor(x, dtype=torch.long)  # noqa: E731
    return PackedBatch(ids, pos, mask, keep, as_t(rows), as_t(kept), as_t(toks), as_t(opt))


def packed_logp(logits: torch.Tensor, batch: PackedBatch, n_cols: int) -> torch.Tensor:
    """Sum of log-probs per (row, continuation) from the kept logits ``(n, keep, V)``: ``(n, n_cols)``.

    Columns with no continuation are ``-inf``.
    """
    dev = logits.device
    rows, kp, tok, opt = (t.to(dev) for t in (batch.rows, batch.kept_pos, batch.tokens, batch.option))
    lse = torch.logsumexp(logits.float(), dim=-1)  # (n, keep)
    picked = logits[rows, kp, tok].float() - lse[rows, kp]  # (M,)
    n = logits.shape[0]
    flat = torch.zeros(n * n_cols, device=dev, dtype=torch.float32).index_add(0, rows * n_cols + opt, picked)
    seen = torch.zeros(n * n_cols, device=dev, dtype=torch.bool)
    seen[rows * n_cols + opt] = True
    return flat.masked_fill(~seen, float("-inf")).view(n, n_cols)


def is_peft_model(model) -> bool:
    """Whether ``model`` is wrapped by peft (it has a ``peft_config`` and a ``get_base_model``)."""
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def unwrap_peft(model):
    """The transformers model under a peft wrapper (its LoRA layers stay injected); ``model`` when there is none."""
    return model.get_base_model() if is_peft_model(model) else model


def supports_packing(model) -> bool:
    """Whether ``model`` (optionally peft-wrapped) takes ``position_ids`` and a custom 4D attention mask."""
    base = unwrap_peft(model)
    impl = getattr(getattr(base, "config", None), "_attn_implementation", None) or "eager"
    return "position_ids" in inspect.signature(base.forward).parameters and impl in MASKABLE_ATTENTION


def packed_forward(model, batch: PackedBatch, n_cols: int) -> torch.Tensor:
    """Run ``model`` on a :class:`PackedBatch` and return ``(n, n_cols)`` summed continuation log-probs (with
    gradient when enabled); only the last ``batch.keep`` positions go through the LM head where the model
    takes ``logits_to_keep``."""
    dev = next(model.parameters()).device
    params = inspect.signature(unwrap_peft(model).forward).parameters
    kwargs = {"input_ids": batch.input_ids.to(dev), "attention_mask": batch.attention_mask.to(dev),
              "position_ids": batch.position_ids.to(dev), "use_cache": False}
    keep_arg = next((n for n in ("logits_to_keep", "num_logits_to_keep") if n in params), None)
    if keep_arg is not None:
        kwargs[keep_arg] = batch.keep
    out = model(**kwargs)
    logits = out.logits if hasattr(out, "logits") else out[0]
    return packed_logp(logits[:, -batch.keep:], batch, n_cols)
