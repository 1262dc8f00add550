"""What the joint trainer needs only across ranks: the Accelerator (DDP with ``find_unused_parameters`` only
where a probe backward shows a trainable parameter without gradient), FSDP's reduction and clipping of the
replicated retriever's gradients, and rank means. A mixin of :class:`~jmlr.train.trainer.JointTrainer`."""
from __future__ import annotations

import logging

import torch
import torch.distributed as dist
from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedDataParallelKwargs
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors
from torch.distributed.tensor import DTensor

from jmlr.core.precision import resolve_precision
from jmlr.index.sharded import collective_device
from jmlr.train import checkpoint as ckpt
from jmlr.train.joint_model import JointModel, loss_inputs

logger = logging.getLogger("jmlr.train.trainer")

__all__ = ["DistMixin"]


class DistMixin:
    """Accelerator set-up and the multi-rank gradient helpers of the joint trainer."""

    def _make_accelerator(self, model: JointModel):
        """The Accelerator for ``dist.strategy``: DDP with ``find_unused_parameters`` only where the
        configuration leaves a trainable parameter without gradient (probed, or ``dist.find_unused_parameters``)."""
        cfg = self.cfg
        cpu = not torch.cuda.is_available()
        state = PartialState(cpu=cpu)  # starts the process group under torchrun
        handlers = []
        if state.num_processes > 1 and cfg.dist.strategy == "ddp":
            find_unused = cfg.dist.find_unused_parameters
            if find_unused is None:
                unused = self._unused_parameters(model, state)
                find_unused = bool(unused)
                if state.is_main_process:
                    if unused:
                        logger.info("DDP: %d trainable parameters get no gradient in this configuration (%s%s): "
                                    "find_unused_parameters=True", len(unused), ", ".join(unused[:3]),
                                    ", ..." if len(unused) > 3 else "")
                    else:
                        logger.info("DDP: every trainable parameter gets a gradient: find_unused_parameters=False")
            handlers.append(DistributedDataParallelKwargs(find_unused_parameters=bool(find_unused)))
        return Accelerator(gradient_accumulation_steps=cfg.optim.grad_accum, cpu=cpu, kwargs_handlers=handlers)

    def _unused_parameters(self, model: JointModel, state) -> list[str]:
        """Names of the trainable parameters that one probe forward + backward (this rank's first micro-batch,
        the first K passages as candidates) leaves without a gradient; agreed over ranks. RNG states, token
        counts and gradients are restored afterwards, so the probe leaves no trace in the run."""
        cfg = self.cfg
        self.rank, self.world = state.process_index, state.num_processes
        device = state.device
        model.to(device)
        saved_rng = ckpt.rng_state()
        r0, q0 = self.reader.tokens_seen, getattr(self.retriever, "tokens_seen", 0)
        K = cfg.index.top_k
        batch = [self.train_data[i] for i in self._batch_indices(0, 0)]
        cand_texts = [[self.doc_texts[j] for j in range(K)] for _ in batch]
        train_docs = cfg.retriever.train_docs and not cfg.retriever.frozen
        cand_emb = None if train_docs else torch.zeros(len(batch), K, self.retriever.dim, device=device)
        modes = {m: m.training for m in model.modules()}  # from_pretrained leaves models in eval mode
        model.train()
        try:
            with resolve_precision(cfg.optim.precision, device).autocast(device):
                out = model([ex.question for ex in batch], batch, cand_texts, cand_emb, train_docs)
                args, kwargs = loss_inputs(self.loss_fn.needs, out, seed=0)
                loss = self.loss_fn(*args, **kwargs)
            loss.backward()
            names = [n for n, p in model.named_parameters() if p.requires_grad]
            flags = torch.tensor([float(p.grad is None) for p in model.parameters() if p.requires_grad])
        finally:
            for p in model.parameters():
                p.grad = None
            for m, mode in modes.items():
                m.training = mode
            ckpt.set_rng_state(saved_rng)
            self.reader.tokens_seen = r0
            if hasattr(self.retriever, "tokens_seen"):
                self.retriever.tokens_seen = q0
        flags = flags.to(collective_device())
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)  # unused on any rank: DDP must look for it on every rank
        return [n for n, f in zip(names, flags.tolist()) if f]

    def _reduce_replicated_grads(self) -> None:
        """FSDP: average the gradients of the parameters FSDP does not own (the replicated retriever) over the
        ranks, in one all-reduce per optimizer step. A gradient missing on every rank stays None."""
        dev = collective_device()
        params = [p for p in self.model.parameters() if p.requires_grad and not isinstance(p, DTensor)]
        if not params:
            return
        has = torch.tensor([float(p.grad is not None) for p in params], device=dev)
        torch.distributed.all_reduce(has, op=torch.distributed.ReduceOp.MAX)
        chosen = [p for p, h in zip(params, has.tolist()) if h]
        for dtype in sorted({p.dtype for p in chosen}, key=str):
            group = [p for p in chosen if p.dtype == dtype]
            grads = [(p.grad if p.grad is not None else torch.zeros_like(p)).to(dev) for p in group]
            flat = _flatten_dense_tensors(grads)
            torch.distributed.all_reduce(flat)
            flat /= self.world
            for p, g in zip(group, _unflatten_dense_tensors(flat, grads)):
                p.grad = g.to(p.device).view_as(p)

    def _sharded_grad_norm(self) -> torch.Tensor:
        """FSDP: the total gradient norm over sharded (DTensor) and replicated gradients alike."""
        dev = collective_device()
        sharded = torch.zeros((), dtype=torch.float64, device=dev)
        replicated = torch.zeros((), dtype=torch.float64, device=dev)
        for p in self.model.parameters():
            g = p.grad
            if g is None:
                continue
            if isinstance(g, DTensor):
                sharded += g.to_local().double().pow(2).sum().to(dev)
            else:
                replicated += g.double().pow(2).sum().to(dev)
        torch.distributed.all_reduce(sharded)  # each rank holds a disjoint shard of every sharded gradient
        return (sharded + replicated).sqrt()

    def _clip_sharded(self, max_norm: float) -> float:
        """FSDP: ``clip_grad_norm_`` over sharded and replicated gradients (the same rule as torch's)."""
        norm = self._sharded_grad_norm()
        coef = float((max_norm / (norm + 1e-6)).clamp(max=1.0))
        if coef < 1.0:
            for p in self.model.parameters():
                if p.grad is not None:
                    (p.grad.to_local() if isinstance(p.grad, DTensor) else p.grad).mul_(coef)
        return float(norm)

    def _mean_over_ranks(self, value: float) -> float:
        """The mean of a per-rank scalar over all ranks (the logged loss is the global batch's)."""
        if self.world == 1 or not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return value
        t = torch.tensor([value], dtype=torch.float64, device=collective_device())
        torch.distributed.all_reduce(t)
        return float(t.item()) / self.world
