"""JointTrainer: one loop that trains the retriever and the reader together.

Read ``JointTrainer.train`` top to bottom: setup, then for each step: retrieve, score, read, loss, optimizer
step, refresh, eval, checkpoint. Shapes: B questions per micro-batch, K candidates per question, d embedding
dim, K' over-retrieved candidates.

The loss says what it needs from the reader (its ``needs``); :class:`~jmlr.train.joint_model.JointModel`
computes exactly that. The rest lives beside this module: checkpoints (:mod:`.joint_checkpoint`), the
Accelerator and multi-rank gradients (:mod:`.joint_dist`), the non-finite guards (:mod:`.guards`), run costs
(:mod:`.costs`), the run folder (:mod:`.run_folder`), the data (:mod:`.run_data`) and the evaluation
(:func:`jmlr.eval.joint.evaluate_joint`).
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import torch
from torch.distributed.device_mesh import init_device_mesh
from tqdm.auto import tqdm

from jmlr.config import TrainConfig, save_config, to_dict, validate
from jmlr.core.precision import resolve_precision
from jmlr.core.sampling import gumbel_top_k
from jmlr.core.seed import seed_everything
from jmlr.eval.joint import evaluate_joint
from jmlr.models import require
from jmlr.reader.loading import reader_load_kwargs, shard_reader
from jmlr.train.budget import TimeBudget, all_ranks_agree
from jmlr.train.costs import RunCosts
from jmlr.train.guards import NonFiniteError, NonFiniteGuardMixin, check_finite_weights
from jmlr.train.joint_checkpoint import CheckpointMixin
from jmlr.train.joint_dist import DistMixin
from jmlr.train.joint_model import JointModel, loss_inputs, make_loss, make_optimizer
from jmlr.train.plots import CURVES_NAME, plot_curves
from jmlr.train.retrieval import RetrievalState, refresh_policy
from jmlr.train.run_data import check_prompt_lengths, from_datasets, load_data, load_models, retriever_prefix
from jmlr.train.run_folder import RUN_OUTPUTS, claim_run_folder, trim_metrics
from jmlr.train.tracking import check_report_to, start_trackers

logger = logging.getLogger(__name__)

__all__ = ["JointTrainer", "JointModel", "RunCosts", "NonFiniteError", "evaluate_joint", "load_data",
           "claim_run_folder", "check_prompt_lengths", "check_finite_weights", "trim_metrics",
           "warn_skipped_refreshes", "RUN_OUTPUTS"]

_from_datasets = from_datasets  # the old private names, for callers not yet moved to run_data
_prefix = retriever_prefix


class JointTrainer(CheckpointMixin, DistMixin, NonFiniteGuardMixin):
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
        corpus, train_data, dev_data = from_datasets(corpus, train_data, dev_data)
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
        self.loss_fn = make_loss(config)  # its needs: what the reader computes for it, nothing more
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
        validate(cfg)
        check_report_to(cfg.report_to)  # a missing tracker package fails before any model loads
        make_loss(cfg)  # an unknown loss or option is named before anything loads
        reader_kw = reader_load_kwargs(cfg.reader)  # LoRA, dtype, attention, quantisation: checked before loading
        lock = claim_run_folder(cfg)  # output_dir checked, locked and created before models load
        require(cfg.retriever.model, "retriever.model")  # a missing or corrupt model is named before anything loads
        require(cfg.reader.model, "reader.model")
        train, dev, _test, corpus = load_data(cfg)
        retriever, reader = load_models(cfg, reader_kw)
        trainer = cls(cfg, retriever, reader, corpus, train, dev, progress=progress)
        trainer._lock = lock
        return trainer

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        """Accelerator, optimizer with two param groups, schedule, index and refresher, resume."""
        if self._setup_done:
            return
        cfg = self.cfg
        if self._lock is None:
            self._lock = claim_run_folder(cfg)
        seed_everything(cfg.seed)
        if not cfg.retriever.train_docs or cfg.retriever.frozen:
            self.retriever.freeze_doc_tower()
        if cfg.retriever.frozen:
            for p in self.retriever.parameters():
                p.requires_grad_(False)
        model = JointModel(self.retriever, self.reader, self.loss_fn.needs)
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
            model.to(self.device)
            shard_reader(self.reader, init_device_mesh(self.device.type, (self.world,)))

        optim, sched = make_optimizer(cfg, self.retriever, self.reader.model)  # AdamW, groups retriever + reader
        # The scheduler stays unwrapped: optim.steps counts optimizer steps whatever the world size (accelerate's
        # wrapper would step it once per rank), and train_step steps it once per optimizer step.
        if self.sharded:  # FSDP2 modules need no wrapper; gradients of the replicated retriever: train_step
            self.model, self.optim = model, acc.prepare(optim)
        else:
            self.model, self.optim = acc.prepare(model, optim)
        self.sched = sched
        self.n_reader_params = sum(p.numel() for p in self.reader.model.parameters())
        self.n_retriever_params = sum(p.numel() for p in self.retriever.parameters())
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

    # ------------------------------------------------------------------ the loop
    def train(self) -> dict:
        """Run the whole schedule; returns the run summary (also written to ``output_dir/summary.json``)."""
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
        out = self.model(questions, batch, cand_texts, cand_emb, train_docs)  # scores (B, K) + the loss's needs
        self.costs.reader_tokens += self.reader.tokens_seen - r0
        self.costs.retriever_tokens += getattr(self.retriever, "tokens_seen", 0) - q0
        seed = cfg.seed * 104_729 + self.step * 1_009 + self.rank  # of the loss's own sampling, if any
        args, kwargs = loss_inputs(self.loss_fn.needs, out, seed)  # raw scores: the loss divides by its temperature
        loss = self.loss_fn(*args, **kwargs)
        stats = {f"loss/{k}": float(v) for k, v in self.loss_fn.last_stats.items() if k != "loss"}
        if "loglik" in out:
            with torch.no_grad():
                stats["retr_agree"] = float((out["scores"].argmax(-1) == out["loglik"].argmax(-1)).float().mean())
                stats["loglik_mean"] = float(out["loglik"].float().mean())
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
            pick = gumbel_top_k(s, m, g)[1]  # (B, m); a CPU generator: the same draws on any device
        return cand.gather(1, pick.to(cand.device))

    def _autocast(self):
        return self.precision.autocast(self.device)

    # ------------------------------------------------------------------ evaluation (checkpoints: CheckpointMixin)
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


def warn_skipped_refreshes(cfg: TrainConfig) -> None:
    """Say when a refresh setting will never take effect during training."""
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

