"""JointTrainer: one loop that trains the retriever and the reader together.

Read ``JointTrainer.train`` top to bottom: setup, then for each step: retrieve, score, read, loss, optimizer
step, refresh, eval, checkpoint. Shapes: B questions per micro-batch, K candidates per question, d embedding
dim, K' over-retrieved candidates.
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from jmlr.config import TrainConfig, save_config, to_dict, validate
from jmlr.core.precision import Precision, resolve_precision
from jmlr.train import checkpoint as ckpt
from jmlr.train.budget import TimeBudget, all_ranks_agree
from jmlr.train.tracking import check_report_to, start_trackers

logger = logging.getLogger(__name__)

RUN_OUTPUTS = ("checkpoints", "metrics.jsonl", "summary.json", "config.yaml", "tb", "curves.png")
"""What a training run writes into its output_dir (what ``overwrite=true`` removes)."""


class NonFiniteError(RuntimeError):
    """A NaN/inf loss, gradient or weight that the ``optim.nonfinite`` policy does not let through."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


class JointModel(nn.Module):
    """Retriever towers + reader LM in one module, so DDP wraps (and syncs) both with one forward.

    ``forward`` returns candidate scores (B, K) with gradient into the towers and reader log-likelihoods
    (B, K) with gradient into the reader; the search itself is done by the trainer beforehand.
    """

    def __init__(self, retriever, reader):
        super().__init__()
        self.retriever = retriever
        self.reader_model = reader.model
        self._reader = reader

    def forward(self, questions: list[str], examples: list, cand_texts: list[list[str]],
                cand_emb: torch.Tensor | None, train_docs: bool, extras: Sequence[str] = ()):
        B, K = len(cand_texts), len(cand_texts[0])
        q = self.retriever.embed_queries(questions)  # (B, d)
        if train_docs:
            flat = [t for row in cand_texts for t in row]
            d = self.retriever.embed_docs(flat).view(B, K, -1)  # (B, K, d)
        else:
            d = cand_emb.to(q.dtype)  # (B, K, d), cached doc embeddings: query-side-only training
        scores = torch.einsum("bd,bkd->bk", q, d)  # (B, K)
        out = {"scores": scores}
        if "token_logp" in extras:
            ll, tok, mask = self._reader.answer_loglik(examples, cand_texts, return_token_logp=True)
            out.update(loglik=ll, token_logp=tok, token_mask=mask)
        else:
            out["loglik"] = self._reader.answer_loglik(examples, cand_texts)  # (B, K)
        if "reader_nll" in extras:
            out["reader_nll"] = -self._reader.concat_loglik(examples, cand_texts)  # (B,)
        if "loo_loglik" in extras:
            out["loo_loglik"] = self._reader.loo_loglik(examples, cand_texts)  # (B, K)
        return out


def loss_extras(loss_fn) -> tuple[str, ...]:
    """Reader outputs a loss needs beyond (scores, loglik): its required inputs, plus the reader NLL on the
    top docs concatenated for jmlr_rank (as the JMLR paper and code do)."""
    need = set(getattr(loss_fn, "required_inputs", ()))
    if getattr(loss_fn, "name", "") == "jmlr_rank":
        need.add("reader_nll")
    if "token_mask" in need:
        need.discard("token_mask")
        need.add("token_logp")
    return tuple(sorted(need))


@dataclass
class RunCosts:
    """What a run cost: the numbers every summary reports."""
    step_times: list[float] = field(default_factory=list)
    reader_tokens: int = 0
    retriever_tokens: int = 0
    eval_s: float = 0.0

    def summary(self, reader_params: int, retriever_params: int, refresh_stats: dict,
                retriever_trains: bool = True) -> dict:
        """Training FLOPs estimated as 6·N·tokens (forward + backward), 2·N·tokens for a frozen retriever."""
        st = self.step_times
        flops = 6 * reader_params * self.reader_tokens + (6 if retriever_trains else 2) * retriever_params * \
            self.retriever_tokens
        return {
            "steps": len(st),
            "step_time_mean_s": float(np.mean(st)) if st else 0.0,
            "step_time_p50_s": float(np.median(st)) if st else 0.0,
            "train_s": float(np.sum(st)),
            "eval_s": self.eval_s,
            "reader_tokens": self.reader_tokens,
            "retriever_tokens": self.retriever_tokens,
            "train_flops_est": float(flops),
            "refresh": refresh_stats,
        }


class JointTrainer:
    """Train a DualEncoder retriever and a Reader in one loop (see module docstring).

    Args:
        config: a :class:`~jmlr.config.TrainConfig`.
        retriever: a :class:`~jmlr.retriever.DualEncoder`.
        reader: a :class:`~jmlr.reader.Reader`.
        corpus: the :class:`~jmlr.data.Corpus` to retrieve from (a ``datasets.Dataset`` with id/text/title
            columns works too, through :meth:`~jmlr.data.Corpus.from_hf`).
        train_data / dev_data: lists of :class:`~jmlr.data.QAExample` (or ``datasets.Dataset`` s with
            question/options/answer columns, through ``load_qa("hf", ...)``).

    >>> trainer = JointTrainer(cfg, DualEncoder.from_pretrained("minilm"), Reader.from_pretrained("smollm2-135m"),
    ...                        corpus, train, dev)            # doctest: +SKIP
    >>> summary = trainer.train()                              # doctest: +SKIP
    """

    def __init__(self, config: TrainConfig, retriever, reader, corpus, train_data: list, dev_data: list | None = None,
                 accelerator=None, progress: bool = True):
        corpus, train_data, dev_data = _from_datasets(corpus, train_data, dev_data)
        check_report_to(config.report_to)
        if not train_data:
            raise ValueError("train_data is empty: nothing to train on")
        if len(corpus) < config.index.top_k:
            raise ValueError(f"corpus has {len(corpus)} passages, fewer than index.top_k={config.index.top_k}")
        if config.index.sample_m and not 0 < config.index.sample_m <= config.index.top_k:
            raise ValueError(f"index.sample_m={config.index.sample_m} must be in 1..index.top_k={config.index.top_k}")
        validate(config)
        self.cfg = config
        self.retriever = retriever
        self.reader = reader
        self.corpus = corpus
        self.train_data = list(train_data)
        self.dev_data = list(dev_data or [])
        self.progress = progress
        self.out = Path(config.output_dir)
        self.doc_texts = corpus.texts(with_title=True)
        self.loss_fn = self._make_loss()
        self.extras = loss_extras(self.loss_fn)
        self._loss_takes_generator = "generator" in getattr(self.loss_fn, "optional_inputs", ())
        self.accelerator = accelerator
        self.history: list[dict] = []  # one row per optimizer step: step, loss, lr, ...
        self.evals: list[dict] = []
        self.costs = RunCosts()
        self.step = 0
        self.nonfinite_skipped = 0  # optimizer steps dropped by the optim.nonfinite guard
        self.time_budget: TimeBudget | None = None  # optim.max_time_s (set by train())
        self._nonfinite_run = 0  # of them, in a row up to now
        self._lock = None  # the output_dir writer lock (see claim_run_folder)
        self._trackers = None  # report_to, started in setup (main process)
        self._setup_done = False

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def from_config(cls, cfg: TrainConfig, progress: bool = True) -> "JointTrainer":
        """Load models and data named by ``cfg`` (aliases resolve to the bundled offline models)."""
        from jmlr.losses import get_loss
        from jmlr.models import require
        from jmlr.reader import Reader
        from jmlr.reader.loading import reader_load_kwargs
        from jmlr.retriever import DualEncoder

        validate(cfg)
        check_report_to(cfg.report_to)  # a missing tracker package fails before any model loads
        get_loss(cfg.loss.name, **dict(cfg.loss.options))  # an unknown loss is named before anything loads
        reader_kw = reader_load_kwargs(cfg.reader)  # LoRA, dtype, attention, quantisation: checked before loading
        lock = claim_run_folder(cfg)  # output_dir checked, locked and created before models load
        require(cfg.retriever.model, "retriever.model")  # a missing or corrupt model is named before anything loads
        require(cfg.reader.model, "reader.model")
        train, dev, _test, corpus = load_data(cfg)
        retriever = DualEncoder.from_pretrained(cfg.retriever.model, shared=cfg.retriever.shared_towers,
                                                pooling=cfg.retriever.pooling, normalize=cfg.retriever.normalize,
                                                max_length=cfg.retriever.max_length,
                                                query_prefix=_prefix(cfg.retriever.query_prefix, cfg.retriever),
                                                doc_prefix=_prefix(cfg.retriever.doc_prefix, cfg.retriever))
        reader = Reader.from_pretrained(cfg.reader.model, template=cfg.reader.template,
                                        max_length=cfg.reader.max_length, target=cfg.reader.target,
                                        gradient_checkpointing=cfg.reader.gradient_checkpointing,
                                        trust_remote_code=cfg.reader.trust_remote_code, **reader_kw)
        trainer = cls(cfg, retriever, reader, corpus, train, dev, progress=progress)
        trainer._lock = lock
        return trainer

    def _make_loss(self):
        from jmlr.losses import get_loss

        kw = dict(self.cfg.loss.options)
        return get_loss(self.cfg.loss.name, **kw)

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        """Accelerator, optimizer with two param groups, schedule, index and refresher, resume."""
        if self._setup_done:
            return
        cfg = self.cfg
        from transformers import get_scheduler

        if self._lock is None:
            self._lock = claim_run_folder(cfg)
        seed_everything(cfg.seed)
        if not cfg.retriever.train_docs or cfg.retriever.frozen:
            self.retriever.freeze_doc_tower()
        if cfg.retriever.frozen:
            for p in self.retriever.parameters():
                p.requires_grad_(False)
        model = JointModel(self.retriever, self.reader)
        if self.accelerator is None:
            self.accelerator = self._make_accelerator(model)
        acc = self.accelerator
        # accumulation the accelerate way: accumulate()/no_sync reduce gradients once per optimizer step, and
        # accelerator.backward divides the loss by this number
        acc.gradient_accumulation_steps = cfg.optim.grad_accum
        self.rank, self.world = acc.process_index, acc.num_processes
        self.device = acc.device
        self.is_main = acc.is_main_process
        self.precision = resolve_precision(cfg.optim.precision, self.device)
        if self.is_main:
            logger.info("precision: %s", self.precision)
        # dist.strategy=fsdp: the reader is sharded with FSDP2 here (accelerate's FSDP plugin would shard the
        # whole joint model, retriever included, and runs on GPUs only); the retriever stays replicated
        self.sharded = cfg.dist.strategy == "fsdp" and self.world > 1
        if self.sharded:
            from torch.distributed.device_mesh import init_device_mesh

            from jmlr.reader.loading import shard_reader

            model.to(self.device)
            shard_reader(self.reader, init_device_mesh(self.device.type, (self.world,)))

        groups = [
            {"params": [p for p in self.retriever.parameters() if p.requires_grad], "lr": cfg.retriever.lr,
             "name": "retriever"},
            {"params": [p for p in self.reader.model.parameters() if p.requires_grad], "lr": cfg.reader.lr,
             "name": "reader"},
        ]
        groups = [g for g in groups if g["params"]]
        if not groups:
            raise ValueError("nothing to train: retriever and reader have no trainable parameters")
        optim = torch.optim.AdamW(groups, weight_decay=cfg.optim.weight_decay)
        sched_name = {"constant": "constant_with_warmup"}.get(cfg.optim.schedule, cfg.optim.schedule)
        sched = get_scheduler(sched_name, optim, num_warmup_steps=cfg.optim.warmup_steps,
                              num_training_steps=cfg.optim.steps)
        # The scheduler stays unwrapped: optim.steps counts optimizer steps whatever the world size (accelerate's
        # wrapper would step it once per rank), and train_step steps it once per optimizer step.
        if self.sharded:  # FSDP2 modules need no wrapper; gradients of the replicated retriever: train_step
            self.model, self.optim = model, acc.prepare(optim)
        else:
            self.model, self.optim = acc.prepare(model, optim)
        self.sched = sched
        self.n_reader_params = sum(p.numel() for p in self.reader.model.parameters())
        self.n_retriever_params = sum(p.numel() for p in self.retriever.parameters())

        from jmlr.train.retrieval import RetrievalState

        self.train_data = check_prompt_lengths(self.reader, self.train_data, cfg, "train")
        self.dev_data = check_prompt_lengths(self.reader, self.dev_data, cfg, "dev")
        self.retrieval = RetrievalState(self.retriever, self.doc_texts, cfg, rank=self.rank, world=self.world,
                                        progress=self.progress and self.is_main, precision=self.precision,
                                        device=self.device)
        if self.is_main:
            warn_skipped_refreshes(cfg)
        if cfg.resume:
            self.load_checkpoint(cfg.resume)
        else:
            self.retrieval.build()
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.out / "config.yaml")
        self._trackers = start_trackers(cfg.report_to, self.out, to_dict(cfg), accelerator=acc) if self.is_main else None
        self._setup_done = True

    def _make_accelerator(self, model: "JointModel"):
        """The Accelerator for ``dist.strategy``: DDP with ``find_unused_parameters`` only where the
        configuration leaves a trainable parameter without gradient (probed, or ``dist.find_unused_parameters``)."""
        from accelerate import Accelerator, PartialState
        from accelerate.utils import DistributedDataParallelKwargs

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

    def _unused_parameters(self, model: "JointModel", state) -> list[str]:
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
                out = model([ex.question for ex in batch], batch, cand_texts, cand_emb, train_docs, self.extras)
                extra = {k: v for k, v in out.items() if k not in ("scores", "loglik")}
                if self._loss_takes_generator:
                    extra["generator"] = torch.Generator(out["scores"].device).manual_seed(0)
                loss = self.loss_fn(out["scores"].float() / cfg.retriever.temperature, out["loglik"].float(), **extra)
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
        import torch.distributed as dist

        from jmlr.index.sharded import collective_device

        flags = flags.to(collective_device())
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)  # unused on any rank: DDP must look for it on every rank
        return [n for n, f in zip(names, flags.tolist()) if f]

    # ------------------------------------------------------------------ the loop
    def train(self) -> dict:
        """Run the whole schedule; returns the run summary (also written to ``output_dir/summary.json``)."""
        from tqdm.auto import tqdm

        cfg = self.cfg
        self.setup()
        bar = tqdm(total=cfg.optim.steps, initial=self.step, desc=f"joint [{self.precision.name}]",
                   disable=not (self.progress and self.is_main), dynamic_ncols=True)
        last_acc = None
        budget = self.time_budget = TimeBudget(cfg.optim.max_time_s)
        budget.begin()
        while self.step < cfg.optim.steps:
            if budget.limit and not all_ranks_agree(budget.allows_next(self.costs.step_times), self.device):
                budget.stopped_at = self.step  # optim.max_time_s: the next step would end past the budget
                logger.warning("optim.max_time_s=%g: stopping after step %d of %d (%.0f s spent)", budget.limit,
                               self.step, cfg.optim.steps, budget.elapsed())
                break
            t0 = time.perf_counter()
            loss_value, stats = self.train_step()  # one optimizer step (grad_accum micro-batches)
            self.step += 1
            self.costs.step_times.append(time.perf_counter() - t0)
            if self.step < cfg.optim.steps:  # after the last step, finish() below rebuilds the index anyway
                self.retrieval.maybe_refresh(self.step)  # async re-encode + swap between steps
            row = {"step": self.step, "loss": loss_value, **stats, "index_version": self.retrieval.version,
                   "step_s": self.costs.step_times[-1], "precision": self.precision.name}
            self.history.append(row)
            if self.is_main and (self.step % max(cfg.log_every, 1) == 0):
                self._log(row)
            if cfg.eval_every and self.step % cfg.eval_every == 0 and self.dev_data and self.step < cfg.optim.steps:
                last_acc = self.evaluate(self.dev_data, split="dev")["accuracy"]
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.step < cfg.optim.steps:
                self.save_checkpoint()
            bar.set_postfix(loss=f"{loss_value:.3f}", acc="-" if last_acc is None else f"{last_acc:.2f}",
                            idx=f"v{self.retrieval.version}{'*' if self.retrieval.refreshing else ''}")
            bar.update(1)
        bar.close()
        self.retrieval.finish()
        if self.dev_data:
            self.evaluate(self.dev_data, split="dev")
        self.save_checkpoint()
        if self.is_main:
            self.plot()
        summary = self.summary()
        self.release()
        return summary

    def release(self) -> None:
        """Give up the output_dir lock (done by :meth:`train` when it finishes)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def plot(self, path: str | os.PathLike | None = None) -> Path:
        """``curves.png`` (loss, dev accuracy and Recall@k, index version against the step) in the run folder."""
        from jmlr.train.plots import CURVES_NAME, plot_curves

        return plot_curves(self.history, self.evals, path or self.out / CURVES_NAME, loss_name=self.cfg.loss.name)

    def _batch_indices(self, step: int, micro: int) -> list[int]:
        """Deterministic, resumable data order: a fresh permutation per epoch from (seed, epoch)."""
        B, W, n = self.cfg.optim.batch_size, self.world, len(self.train_data)
        start = ((step * self.cfg.optim.grad_accum + micro) * W + self.rank) * B
        out = []
        for pos in range(start, start + B):
            epoch, i = divmod(pos, n)
            if not hasattr(self, "_perms") or self._perms[0] != epoch:
                g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch)
                self._perms = (epoch, torch.randperm(n, generator=g).tolist())
            out.append(self._perms[1][i])
        return out

    def train_step(self) -> tuple[float, dict]:
        """One optimizer step over ``optim.grad_accum`` micro-batches; returns (loss averaged over the
        micro-batches and ranks, stats). Gradients are reduced across ranks once, on the last micro-batch."""
        cfg = self.cfg
        acc = self.accelerator
        self.model.train()
        ga = cfg.optim.grad_accum
        total, stats_acc = 0.0, {}
        acc.step = 0  # accumulate()'s micro-batch counter: the step's last micro-batch syncs, whatever came before
        for micro in range(ga):
            batch = [self.train_data[i] for i in self._batch_indices(self.step, micro)]
            if self.sharded:  # FSDP2: reduce-scatter the reader's gradients in the last micro-batch only
                self.reader.model.set_requires_gradient_sync(micro == ga - 1)
            with acc.accumulate(self.model):  # no_sync (DDP) / no reduce-scatter (FSDP) except on the last one
                with self._autocast():
                    loss, stats = self._micro_step(batch)
                acc.backward(loss)  # divided by gradient_accumulation_steps inside
            total += float(loss.detach()) / ga
            for k, v in stats.items():
                stats_acc[k] = stats_acc.get(k, 0.0) + v / ga
        if not acc.sync_gradients:
            raise RuntimeError(f"gradient accumulation out of step: accelerator.gradient_accumulation_steps="
                               f"{acc.gradient_accumulation_steps} but optim.grad_accum={ga}")
        if self.sharded:
            self._reduce_replicated_grads()
        if cfg.optim.max_grad_norm:
            if self.sharded:
                stats_acc["grad_norm"] = self._clip_sharded(cfg.optim.max_grad_norm)
            else:
                stats_acc["grad_norm"] = float(acc.clip_grad_norm_(self.model.parameters(), cfg.optim.max_grad_norm))
        total = self._mean_over_ranks(total)
        self._guard_nonfinite(total, stats_acc)  # NaN/inf: drops the gradients, so the step below is a no-op
        self.optim.step()
        self.sched.step()
        self.optim.zero_grad(set_to_none=True)
        lrs = self.sched.get_last_lr()
        for g, lr in zip(self.optim.param_groups, lrs):
            stats_acc[f"lr_{g.get('name', 'group')}"] = lr
        return total, stats_acc

    def _reduce_replicated_grads(self) -> None:
        """FSDP: average the gradients of the parameters FSDP does not own (the replicated retriever) over the
        ranks, in one all-reduce per optimizer step. A gradient missing on every rank stays None."""
        from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors
        from torch.distributed.tensor import DTensor

        from jmlr.index.sharded import collective_device

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
        from torch.distributed.tensor import DTensor

        from jmlr.index.sharded import collective_device

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
        from torch.distributed.tensor import DTensor

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
        from jmlr.index.sharded import collective_device

        t = torch.tensor([value], dtype=torch.float64, device=collective_device())
        torch.distributed.all_reduce(t)
        return float(t.item()) / self.world

    def _guard_nonfinite(self, loss: float, stats: dict) -> bool:
        """Apply ``optim.nonfinite`` to this step's loss and gradients; True when the update is dropped.

        ``skip`` sets every gradient to None (AdamW then leaves weights and moments untouched), counts the step
        and raises :class:`NonFiniteError` after more than ``optim.max_nonfinite_skips`` in a row; ``raise``
        raises at once; ``ignore`` applies the step. Every rank takes the same decision.
        """
        oc = self.cfg.optim
        if oc.nonfinite == "ignore":
            return False
        norm = stats.get("grad_norm")
        if norm is None and getattr(self, "sharded", False):
            norm = float(self._sharded_grad_norm())
        elif norm is None:
            grads = [p.grad for g in self.optim.param_groups for p in g["params"] if p.grad is not None]
            norm = float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0
        bad = torch.tensor(0.0 if math.isfinite(loss) and math.isfinite(norm) else 1.0, device=self.device)
        if self.world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
        if not bad.item():
            self._nonfinite_run = 0
            return False
        step = self.step + 1
        what = f"step {step}: loss {loss}, gradient norm {norm}"
        hint = ("lower retriever.lr / reader.lr, keep optim.max_grad_norm > 0, or check the data of this step; "
                "optim.nonfinite=skip|raise|ignore sets the policy")
        if oc.nonfinite == "raise":
            raise NonFiniteError(f"non-finite loss or gradient at {what} (optim.nonfinite=raise); {hint}")
        self._nonfinite_run += 1
        self.nonfinite_skipped += 1
        if self._nonfinite_run > oc.max_nonfinite_skips:
            raise NonFiniteError(f"{self._nonfinite_run} steps in a row had a non-finite loss or gradient (last: "
                                 f"{what}), more than optim.max_nonfinite_skips={oc.max_nonfinite_skips}; {hint}")
        logger.warning("non-finite loss or gradient at %s: update skipped (%d in a row, %d in all; optim.nonfinite"
                       "=skip)", what, self._nonfinite_run, self.nonfinite_skipped)
        self.optim.zero_grad(set_to_none=True)
        stats["skipped"] = 1
        stats["nonfinite_skipped"] = self.nonfinite_skipped
        return True

    def _micro_step(self, batch: list) -> tuple[torch.Tensor, dict]:
        cfg = self.cfg
        K, Kp = cfg.index.top_k, max(cfg.index.over_retrieve, cfg.index.top_k)
        questions = [ex.question for ex in batch]
        # 1. retrieve K' candidates from the current (possibly stale) index
        with torch.no_grad():
            q = self.retriever.embed_queries(questions).float()  # (B, d)
        if cfg.index.fixed_candidates:  # JMLR as released: each question's pool from the initial retriever
            cand = self._fixed_candidates(batch, Kp, q.device)  # (B, K')
        else:
            _, cand = self.retrieval.search(q, Kp)  # (B, K') corpus rows
        # 2. over-retrieval: rerank the K' with the current doc tower and keep K
        if Kp > K:
            with torch.no_grad():
                flat = [self.doc_texts[j] for j in cand.reshape(-1).tolist()]
                d = self.retriever.encode_docs(flat, batch_size=len(flat), progress=False).view(len(batch), Kp, -1)
                fresh = torch.einsum("bd,bkd->bk", q, d.float().to(q.device))  # (B, K')
            cand = cand.gather(1, fresh.topk(K, dim=1).indices.to(cand.device))  # (B, K)
        # 3. optionally sample m of K from softmax(s / tau) (JMLR), with a step-seeded generator
        if cfg.index.sample_m and cfg.index.sample_m < K:
            cand = self._sample_candidates(q, cand)
        cand_texts = [[self.doc_texts[j] for j in row] for row in cand.tolist()]
        train_docs = cfg.retriever.train_docs and not cfg.retriever.frozen
        cand_emb = None if train_docs else self.retrieval.embeddings(cand)  # (B, K, d)
        # 4. scores with gradient + reader log-likelihoods, in one (DDP-wrapped) forward
        r0, q0 = self.reader.tokens_seen, getattr(self.retriever, "tokens_seen", 0)
        out = self.model(questions, batch, cand_texts, cand_emb, train_docs, self.extras)
        self.costs.reader_tokens += self.reader.tokens_seen - r0
        self.costs.retriever_tokens += getattr(self.retriever, "tokens_seen", 0) - q0
        scores = out["scores"].float() / cfg.retriever.temperature  # (B, K)
        extra = {k: v for k, v in out.items() if k not in ("scores", "loglik")}
        if self._loss_takes_generator:  # step-seeded sampling inside the loss: resumable and reproducible
            extra["generator"] = torch.Generator(scores.device).manual_seed(
                self.cfg.seed * 104_729 + self.step * 1_009 + self.rank)
        loss = self.loss_fn(scores, out["loglik"].float(), **extra)
        with torch.no_grad():
            p = scores.softmax(-1)
            best = out["loglik"].float().argmax(-1)
            stats = {"retr_entropy": float(-(p * p.clamp_min(1e-12).log()).sum(-1).mean()),
                     "retr_agree": float((scores.argmax(-1) == best).float().mean()),
                     "loglik_mean": float(out["loglik"].float().mean())}
        return loss, stats

    def _fixed_candidates(self, batch: list, k: int, device) -> torch.Tensor:
        """``index.fixed_candidates``: all training questions searched once, on first use (a resume searches again)."""
        if getattr(self, "_pool", None) is None:
            with torch.no_grad():
                q = self.retriever.encode_queries([ex.question for ex in self.train_data], progress=False).float()
            self._pool = dict(zip(map(id, self.train_data), self.retrieval.search(q.to(device), k)[1]))
        return torch.stack([self._pool[id(ex)] for ex in batch])

    def _sample_candidates(self, q: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
        """Gumbel-top-m sampling without replacement from softmax(s/tau) over the K candidates."""
        m = self.cfg.index.sample_m
        with torch.no_grad():
            emb = self.retrieval.embeddings(cand)  # (B, K, d)
            s = torch.einsum("bd,bkd->bk", q, emb.float().to(q.device)) / self.cfg.retriever.temperature
            g = torch.Generator().manual_seed(self.cfg.seed * 7919 + self.step * 31 + self.rank)
            u = torch.rand(s.shape, generator=g).clamp(1e-9, 1 - 1e-9).to(s.device)  # CPU generator: same draws anywhere
            gumbel = -torch.log(-torch.log(u))
            pick = (s + gumbel).topk(m, dim=1).indices  # (B, m)
        return cand.gather(1, pick.to(cand.device))

    def _autocast(self):
        return self.precision.autocast(self.device)

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, examples: list, split: str = "dev", retrieval: bool = True, k: int | None = None) -> dict:
        """MCQ accuracy (with the top-K passages, or closed-book) and Recall@k of the gold passages."""
        t0 = time.perf_counter()
        self.setup()
        res = evaluate_joint(self.retriever, self.reader, self.retrieval, self.doc_texts, self.corpus, examples,
                             top_k=self.cfg.index.top_k, use_retrieval=retrieval, precision=self.precision,
                             progress=self.progress and self.is_main, recall_ks=(1, 5, 20) if k is None else (k,),
                             # FSDP: a reader forward gathers weights from every rank, so every rank scores
                             # every example (the same forwards, in the same order) instead of its share
                             rank=0 if self.sharded else self.rank, world=1 if self.sharded else self.world)
        res.update(split=split, step=self.step, index_version=self.retrieval.version)
        self.costs.eval_s += time.perf_counter() - t0
        self.evals.append(res)
        if self.is_main:
            self._log({"eval": res})
        return res

    # ------------------------------------------------------------------ checkpoints
    def _collective(self) -> bool:
        return self.world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized()

    def _all_ok(self, ok: bool) -> bool:
        """True when ``ok`` holds on every rank (a collective with ``world > 1``): every rank takes the same
        branch, so one rank's failure never leaves the others waiting at a barrier."""
        return all_ranks_agree(ok, self.device) if self._collective() else ok

    def _from_main(self, obj):
        """``obj`` as rank 0 holds it, on every rank (an object broadcast: checkpoints only, off the hot path)."""
        if not self._collective():
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def _gather_objects(self, obj) -> list:
        if not self._collective():
            return [obj]
        parts: list = [None] * self.world
        torch.distributed.all_gather_object(parts, obj)
        return parts

    def save_checkpoint(self, folder: str | os.PathLike | None = None) -> Path | None:
        """Reader, retriever, optimizer, scheduler, RNG, step and index: atomically, in safetensors + state.

        Every rank calls it. Under torchrun each rank writes its own index shard (``index/rank-R``) into the
        checkpoint's temporary folder; rank 0 writes everything else, the manifest over all files, and then
        renames the folder into place. The ranks agree after each phase, so a failure on any rank leaves no
        checkpoint under the final name on any rank (and raises everywhere). With several nodes, ``output_dir``
        must be on a file system all ranks share. Returns the folder on rank 0, None elsewhere.
        """
        from jmlr.fs import write_error

        self.accelerator.wait_for_everyone()
        folder = Path(folder) if folder else self.out / "checkpoints" / f"step-{self.step}"
        problem = None
        try:
            check_finite_weights({"reader": self.reader.model, "retriever": self.retriever}, folder)
        except NonFiniteError as e:
            problem = e
        if not self._all_ok(problem is None):
            raise problem or NonFiniteError(f"refusing to write checkpoint {folder}: another rank holds NaN/inf "
                                            "weights; earlier checkpoints are kept")
        rngs = self._gather_objects(ckpt.rng_state())  # each rank's RNG: a resumed rank continues its own draws
        reader_state, optim_state = None, None
        if self.sharded:  # FSDP: gathered from every rank (collectives), held by rank 0 only
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

            from jmlr.reader.loading import full_state_dict

            reader_state = full_state_dict(self.reader.model)
            optim_state = get_optimizer_state_dict(self.model, self.optim.optimizer, options=StateDictOptions(
                full_state_dict=True, cpu_offload=True))
        stack, tmp, err = None, None, None
        if self.is_main:
            import contextlib

            stack = contextlib.ExitStack()
            try:
                tmp = stack.enter_context(ckpt.atomic_dir(folder))
            except BaseException as e:  # noqa: BLE001 (told to every rank below, then raised)
                err = e
        tmp = self._from_main(str(tmp) if tmp is not None else None)
        if tmp is None:
            raise err if err is not None else OSError(f"checkpoint {folder}: rank 0 could not create its "
                                                      "temporary folder")
        tmp = Path(tmp)

        def phase(write) -> None:
            nonlocal err
            if err is None:
                try:
                    write()
                except BaseException as e:  # noqa: BLE001
                    err = e
            if not self._all_ok(err is None):
                if err is None:
                    err = RuntimeError(f"checkpoint {folder} not written: another rank failed to write its part "
                                       "(its error names the cause); earlier checkpoints are kept")
                    if stack is not None:
                        stack.__exit__(type(err), err, None)
                    raise err
                if stack is not None:  # rank 0: the temporary folder goes, the final name is untouched
                    stack.__exit__(type(err), err, err.__traceback__)
                if isinstance(err, (OSError, RuntimeError)) and not type(err).__module__.startswith("jmlr"):
                    raise write_error(err, folder) from err
                raise err

        def shards() -> None:  # every rank: its own index shard (rank-R), or the whole index on one process
            self.retrieval.save(tmp / "index")

        def main_part() -> None:
            if not self.is_main:
                return
            self.reader.save_pretrained(tmp / "reader", state_dict=reader_state)
            self.retriever.save_pretrained(tmp / "retriever")
            ckpt.save_state(tmp, {
                "step": self.step,
                "world": self.world,
                "strategy": "fsdp" if self.sharded else "ddp",  # fsdp: the optimizer state is keyed by name
                "optimizer": optim_state if self.sharded else self.optim.state_dict(),
                "scheduler": self.sched.state_dict(),
                "rng": rngs[0],
                "rng_ranks": rngs,
                "index_version": self.retrieval.version,
                "last_refresh_trigger": self.retrieval.last_trigger_step,
                "history": json.dumps(self.history),
                "config": json.dumps(to_dict(self.cfg)),
                "nonfinite_skipped": self.nonfinite_skipped,
            })

        phase(shards)
        phase(main_part)  # after the shards: the manifest below covers every rank's files

        def finish() -> None:
            if stack is not None:
                ckpt.write_manifest(tmp, self.step)
                stack.close()  # fsync everything, then one rename into place

        phase(finish)
        return folder if self.is_main else None

    def load_checkpoint(self, folder: str | os.PathLike) -> None:
        """Restore everything ``save_checkpoint`` wrote; training continues at the saved step.

        Every rank calls it. Weights are loaded in place into the live reader and retriever (the optimizer
        holds them; no second copy of the reader is built). Rank 0 picks and verifies the checkpoint (digests
        of every file) and tells the others; each rank then loads its own index shard and RNG state. Resumed
        with another number of ranks, the index is rebuilt from the restored doc tower instead.
        """
        problem = None
        if self.is_main:
            try:
                if str(folder) == "latest":
                    found = ckpt.latest_checkpoint(self.out)
                    if found is None:
                        raise FileNotFoundError(f"resume=latest but {self.out}/checkpoints holds no usable "
                                                "checkpoint")
                    folder = found
                problem = ckpt.verify_checkpoint(Path(folder))
                if problem:
                    problem = ckpt.CorruptCheckpointError(f"resume={folder}: {problem}; resume from another "
                                                          "checkpoint (resume=latest falls back to the newest good "
                                                          "one)")
            except Exception as e:  # noqa: BLE001 (told to every rank, then raised)
                problem = e
        folder, failed = self._from_main((str(folder), problem is not None))
        if failed:
            raise problem if problem is not None else RuntimeError(f"resume={folder}: rank 0 could not use this "
                                                                   "checkpoint (its error names the cause)")
        folder = Path(folder)
        state = ckpt.load_state(folder)
        _check_steps_left(int(state["step"]), self.cfg, folder)
        saved_strategy = state.get("strategy", "ddp")
        if saved_strategy != ("fsdp" if self.sharded else "ddp"):
            raise ValueError(f"resume={folder}: the checkpoint was written with dist.strategy={saved_strategy} on "
                             f"{state.get('world', 1)} rank(s); resume it the same way")
        self.reader.load_weights(folder / "reader")  # in place, sharded or not: no second reader
        self._load_retriever_weights(folder / "retriever")
        if self.sharded:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(self.model, self.optim.optimizer, state["optimizer"] if self.is_main else {},
                                     # strict=False: a parameter that never had a gradient has no state
                                     options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True,
                                                              strict=False))
        else:
            self.optim.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        self.history = json.loads(state["history"])
        saved_world = int(state.get("world", 1))
        if saved_world == self.world:
            err = None
            try:
                self.retrieval.load(folder / "index", version=int(state["index_version"]))
            except Exception as e:  # noqa: BLE001 (every rank learns that one failed)
                err = e
            if not self._all_ok(err is None):
                raise err or RuntimeError(f"resume={folder}: another rank could not load its index shard (its "
                                          "error names the cause)")
        else:
            if self.is_main:
                logger.warning("resume: %s was written by %d rank(s), this run has %d: its index shards do not "
                               "fit, so the index is rebuilt from the restored doc tower", folder, saved_world,
                               self.world)
            self.retrieval.build()
        self.retrieval.last_trigger_step = int(state["last_refresh_trigger"])
        self.nonfinite_skipped = int(state.get("nonfinite_skipped", 0))
        rngs = state.get("rng_ranks")
        ckpt.set_rng_state(rngs[self.rank] if rngs and saved_world == self.world else state["rng"])
        if self.is_main:
            trim_metrics(self.out / "metrics.jsonl", self.step)

    def _load_retriever_weights(self, folder: Path) -> None:
        """The saved retriever's weights into the live towers (the optimizer holds their parameters). The
        retriever is encoder-sized, so it is read through ``DualEncoder.from_pretrained`` and copied."""
        from jmlr.retriever import DualEncoder

        saved = DualEncoder.from_pretrained(folder, shared=self.retriever.shared)
        self.retriever.load_state_dict(saved.state_dict())
        del saved

    # ------------------------------------------------------------------ logging and summary
    def _log(self, row: dict) -> None:
        if self._trackers is not None:
            self._trackers.log(row)  # metrics.jsonl and/or accelerate trackers (report_to)

    def summary(self) -> dict:
        s = {
            "steps": self.step,
            "final_loss": self.history[-1]["loss"] if self.history else None,
            "losses": [h["loss"] for h in self.history],
            "evals": self.evals,
            "precision": self.precision.as_dict(),
            "nonfinite_skipped": self.nonfinite_skipped,
            "time_budget": self.time_budget.as_dict(self.cfg.optim.steps) if self.time_budget else None,
            "costs": self.costs.summary(self.n_reader_params, self.n_retriever_params, self.retrieval.stats(),
                                        retriever_trains=not self.cfg.retriever.frozen),
        }
        if self.is_main:
            (self.out / "summary.json").write_text(json.dumps(s, indent=2, default=float))
        return s


@torch.no_grad()
def evaluate_joint(retriever, reader, state, doc_texts, corpus, examples, top_k: int = 4,
                   use_retrieval: bool = True, precision: Precision | str | None = None, progress: bool = True,
                   batch_size: int = 8, recall_ks=(1, 5, 20), rank: int = 0, world: int = 1,
                   return_predictions: bool = False) -> dict:
    """Accuracy of ``reader`` on ``examples`` with the top-``top_k`` passages from ``state`` (a
    RetrievalState), or closed-book when ``use_retrieval`` is False, plus Recall@k of the gold passages.

    ``precision``: a resolved :class:`~jmlr.core.precision.Precision` or ``auto | fp32 | bf16 | fp16`` (default
    ``auto`` on the reader's device). Examples are batched by length (similar prompts together: less padding).
    With ``world > 1`` (torchrun) each rank scores every ``world``-th example and the results are gathered, so
    every rank returns the same, full result; every rank must call this (the sharded search is collective).
    ``return_predictions`` adds ``predictions`` (letter per example) and ``ranked`` (top corpus ids per example).
    """
    from tqdm.auto import tqdm

    from jmlr.eval.mcq import mcq_accuracy
    from jmlr.eval.retrieval import retrieval_metrics

    amp = precision if isinstance(precision, Precision) else resolve_precision(precision or "auto", reader.device)
    n = len(examples)
    mine = list(range(rank, n, world))  # this rank's share
    mine.sort(key=lambda i: _length_key(examples[i]))
    n_batches = math.ceil(math.ceil(n / world) / batch_size)  # the same on every rank: search is collective
    kmax = min(max(max(recall_ks), top_k), len(doc_texts))
    preds: dict[int, Any] = {}
    ranked: dict[int, list] = {}
    for s in tqdm(range(n_batches), desc="eval", disable=not progress, leave=False):
        idx = mine[s * batch_size:(s + 1) * batch_size]
        batch = [examples[i] for i in idx]
        with amp.autocast(reader.device):
            q = retriever.encode_queries([ex.question for ex in batch], batch_size=max(len(batch), 1),
                                         progress=False) if batch else None
        if q is None:  # this rank has run out of examples but still joins the collective search
            q = torch.zeros((0, state.dim), dtype=torch.float32, device=getattr(state, "device", "cpu"))
        _, cand = state.search(q.float(), kmax, report=False)  # (b, kmax); eval pools do not steer refresh
        rows = cand.tolist()
        for i, row in zip(idx, rows):
            ranked[i] = [corpus.ids[j] for j in row]
        if not batch:
            continue
        passages = [[doc_texts[j] for j in row[:top_k]] for row in rows] if use_retrieval else None
        with amp.autocast(reader.device):
            for i, p in zip(idx, reader.predict(batch, passages)):
                preds[i] = p
    if world > 1:
        import torch.distributed as dist

        parts: list = [None] * world
        dist.all_gather_object(parts, (preds, ranked))  # once per evaluation, off the training hot path
        for p, r in parts:
            preds.update(p)
            ranked.update(r)
    res = mcq_accuracy([preds[i] for i in range(n)], [ex.answer for ex in examples])
    golds = [list(ex.gold_passage_ids) for ex in examples]
    if any(golds):
        res.update(retrieval_metrics([ranked[i] for i in range(n)], golds, ks=recall_ks))
    res["retrieval"] = use_retrieval
    res["precision"] = amp.name
    if return_predictions:
        res["predictions"] = [preds[i] for i in range(n)]
        res["ranked"] = [ranked[i] for i in range(n)]
    return res


def _length_key(ex) -> int:
    """A cheap proxy of an example's prompt length, for batching by length."""
    return len(ex.question) + sum(len(str(o)) for o in (getattr(ex, "options", None) or {}).values())


def _from_datasets(corpus, train_data, dev_data):
    """Hugging Face datasets in: a Dataset corpus through Corpus.from_hf, Dataset QA through load_qa("hf")."""
    from jmlr.data.hf import is_hf_dataset

    if is_hf_dataset(corpus):
        from jmlr.data import Corpus

        corpus = Corpus.from_hf(corpus)
    if is_hf_dataset(train_data) or is_hf_dataset(dev_data):
        from jmlr.data import load_qa

        train_data = load_qa("hf", train_data) if is_hf_dataset(train_data) else train_data
        dev_data = load_qa("hf", dev_data) if is_hf_dataset(dev_data) else dev_data
    return corpus, train_data, dev_data


def _prefix(value, rcfg):
    """A retriever prefix from the config: the value, else the model's prompt (None), or none at all ("")."""
    return value if value is not None else (None if rcfg.model_prompts else "")


def load_data(cfg: TrainConfig):
    """(train, dev, test, corpus) named by ``cfg.data`` ('demo' = the bundled demo data)."""
    from jmlr.data import Corpus, load_qa

    d = cfg.data

    def qa(src, split):
        if src == "demo":
            from jmlr.data.demo import demo_qa
            ex = demo_qa(split)
        else:
            ex = load_qa(d.format, src, **({"mapping": d.mapping} if d.mapping else {}))
        lim = d.max_train if split == "train" else d.max_eval
        return ex[:lim] if lim else ex

    if d.corpus == "demo":
        from jmlr.data.demo import demo_corpus
        corpus = demo_corpus()
    else:
        from jmlr.data.hf import corpus_load_kwargs

        kw = corpus_load_kwargs(d.corpus_format, d.corpus_mapping, d.corpus) if d.corpus_mapping else {}
        corpus = Corpus.load(d.corpus, fmt=d.corpus_format, **kw)
    return qa(d.train, "train"), qa(d.dev, "dev"), qa(d.test, "test"), corpus


# ----------------------------------------------------------------------------------------------- reliability

def claim_run_folder(cfg: TrainConfig):
    """Check, create and lock ``cfg.output_dir`` before any model loads; return the held lock (None off rank 0).

    A fresh run (no ``resume``) refuses a folder that already holds files unless ``overwrite=true``, which
    removes the old run's outputs (:data:`RUN_OUTPUTS`) first, so stale ``checkpoints/step-N`` folders can never
    be picked up by a later ``resume=latest``. A resume that has nothing left to train is refused here when
    the checkpoint's step is known without loading it. Temporary folders left by a killed run are removed.
    """
    from jmlr.fs import LOCK_NAMES, check_writable_dir, clean_stale_tmp, run_folder_lock

    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, global rank 0 owns the folder
        return None
    out = Path(cfg.output_dir)
    check_writable_dir(out, "output_dir")
    lock = run_folder_lock(out, f"output_dir {out}").acquire()
    try:
        clean_stale_tmp(out, locked=True)
        clean_stale_tmp(out / "checkpoints", locked=True)
        if cfg.resume:
            if str(cfg.resume) == "latest":
                found = ckpt.latest_checkpoint(out, digests=False)
                if found is None:
                    raise FileNotFoundError(f"resume=latest but {out / 'checkpoints'} holds no usable checkpoint; "
                                            "start a fresh run without resume")
            else:
                found = Path(cfg.resume)
                if not (found / ckpt.STATE_FILE).is_file():
                    raise FileNotFoundError(f"resume={cfg.resume}: not a jmlr checkpoint (no {ckpt.STATE_FILE})")
            step = ckpt.checkpoint_step(found)
            if step is not None:
                _check_steps_left(step, cfg, found)
                newer = [p.name for s, p in ckpt.list_checkpoints(out) if s > step]
                if newer:
                    logger.warning("resuming from step %d while %s in %s hold(s) later steps of the earlier run; "
                                   "the resumed run replaces them as it reaches those steps, and resume=latest "
                                   "would pick them until then", step, ", ".join(newer), out / "checkpoints")
        else:
            present = sorted(p.name for p in out.iterdir() if p.name not in LOCK_NAMES)
            if present and not cfg.overwrite:
                shown = ", ".join(present[:4]) + (f" and {len(present) - 4} more" if len(present) > 4 else "")
                raise FileExistsError(
                    f"output_dir {out} is not empty (it holds {shown}); a fresh run would mix with it: pass "
                    "overwrite=true to replace the old run's outputs, resume=latest to continue it, or choose "
                    "another output_dir")
            if present:
                import shutil

                removed = [n for n in RUN_OUTPUTS if (out / n).exists()]
                for name in removed:
                    p = out / name
                    shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
                if removed:
                    logger.warning("overwrite=true: removed the old run's %s from %s", ", ".join(removed), out)
    except BaseException:
        lock.release()
        raise
    return lock


def _check_steps_left(step: int, cfg: TrainConfig, folder) -> None:
    if step >= cfg.optim.steps:
        raise ValueError(f"resume: checkpoint {folder} is at step {step} and optim.steps={cfg.optim.steps}: nothing "
                         "left to train; raise optim.steps to train further")


def check_prompt_lengths(reader, examples: list, cfg: TrainConfig, split: str) -> list:
    """Tokenise every question once (question + options + answer, the passages empty) before the corpus is
    encoded. An example that cannot fit ``reader.max_length`` even without passages is refused, naming the
    longest (``data.long_prompts=refuse``), or has its question text cut to fit (``truncate``)."""
    import dataclasses

    tok = getattr(reader, "tokenizer", None)
    limit = int(getattr(reader, "max_length", 0) or 0)
    if not examples or tok is None or limit <= 0 or not hasattr(reader, "build_prompt"):
        return examples
    K = cfg.index.top_k
    cap = 32 * limit  # characters: a prefix this long that already overflows needs no full tokenisation

    def count(texts: list[str]) -> list[int]:
        return [len(x) for x in tok([t[:cap] for t in texts], add_special_tokens=False)["input_ids"]]

    def needs(batch: list) -> list[int]:
        prompts, targets = [], []
        for ex in batch:
            prompts.append(reader.build_prompt(ex.question, reader.prompt_options(ex), [""] * K))
            try:
                if getattr(reader, "target", None) == "option_text" and getattr(ex, "options", None):
                    targets.append([reader.target_for(ex, letter=L) for L in ex.options])
                else:
                    targets.append([reader.target_for(ex)])
            except ValueError:  # unlabelled (evaluation only): its answer's length is unknown
                targets.append([""])
        flat = [t for ts in targets for t in ts]
        tl, it = iter(count(flat) if flat else []), []
        for ts in targets:
            it.append(max(next(tl) for _ in ts))
        return [p + t for p, t in zip(count(prompts), it)]

    lengths = needs(examples)
    over = [i for i, n in enumerate(lengths) if n > limit]
    if not over:
        return examples
    worst = max(over, key=lambda i: lengths[i])
    desc = (f"{split} data: {len(over)} of {len(examples)} questions do not fit reader.max_length={limit} even "
            f"without passages; the longest, {examples[worst].id!r}, needs at least {lengths[worst]} tokens "
            "(question + options + answer)")
    if cfg.data.long_prompts != "truncate":
        raise ValueError(desc + "; raise reader.max_length, shorten those questions, or set "
                                "data.long_prompts=truncate to cut them")
    out = list(examples)
    for i in over:
        ex = out[i]
        q = ex.question[:cap]
        enc = tok(q, add_special_tokens=False, return_offsets_mapping=True)
        offsets, n = enc["offset_mapping"], lengths[i]
        keep = len(offsets)
        for _ in range(16):
            keep = max(keep - (n - limit) - 1, 0)
            cut = q[: offsets[keep - 1][1]].rstrip() if keep else ""
            cand = dataclasses.replace(ex, question=cut or "?")
            n = needs([cand])[0]
            if n <= limit or keep == 0:
                break
        if n > limit:
            raise ValueError(f"{split} data: example {ex.id!r} needs {n} tokens for its options and answer alone, "
                             f"more than reader.max_length={limit}; raise reader.max_length")
        out[i] = cand
    logger.warning("%s; data.long_prompts=truncate: cut their question text to fit", desc)
    return out


def warn_skipped_refreshes(cfg: TrainConfig) -> None:
    """Say when a refresh setting will never take effect during training."""
    from jmlr.train.retrieval import refresh_policy

    r = cfg.refresh
    if refresh_policy(r) == "never":
        return
    if cfg.retriever.frozen or not cfg.retriever.train_docs:
        key = "retriever.frozen=true" if cfg.retriever.frozen else "retriever.train_docs=false"
        logger.warning("refresh policy %r is set but %s freezes the doc tower: the index is never refreshed "
                       "(its embeddings cannot go stale)", refresh_policy(r), key)
    elif r.every and not r.schedule and r.staleness_threshold is None and r.every >= cfg.optim.steps:
        logger.warning("refresh.every=%d >= optim.steps=%d: no refresh runs during training, only the final "
                       "rebuild after the last step", r.every, cfg.optim.steps)


def check_finite_weights(modules: dict, folder) -> None:
    """Raise :class:`NonFiniteError` naming the first parameter that holds NaN/inf (no checkpoint from it)."""
    for prefix, module in modules.items():
        for name, p in module.named_parameters():
            t = p.detach()
            t = t.to_local() if hasattr(t, "to_local") else t  # FSDP: this rank's shard (the ranks agree after)
            if not bool(torch.isfinite(t).all()):
                bad = int((~torch.isfinite(t)).sum())
                raise NonFiniteError(f"refusing to write checkpoint {folder}: parameter {prefix}.{name} holds {bad} "
                                     "NaN/inf values; earlier checkpoints are kept (optim.nonfinite=skip stops "
                                     "such updates)")


def trim_metrics(path: Path, step: int) -> int:
    """Drop the rows of ``metrics.jsonl`` logged after ``step`` (a resumed run logs them again); returns how many."""
    from jmlr.fs import write_text_atomic

    if not path.is_file():
        return 0
    keep, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
            s = row["eval"].get("step", 0) if "eval" in row else row.get("step", 0)
        except (ValueError, AttributeError, TypeError):
            dropped += 1  # a line cut short by the kill that ended the earlier run
            continue
        if s is not None and int(s) > step:
            dropped += 1
        else:
            keep.append(line)
    if dropped:
        write_text_atomic(path, "".join(f"{x}\n" for x in keep))
        logger.info("%s: dropped %d row(s) after step %d, logged by the run being resumed", path, dropped, step)
    return dropped
