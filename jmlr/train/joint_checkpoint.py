"""The joint trainer's checkpoints: save and resume every rank's part (weights, optimizer, scheduler, RNG,
history, index shards), with the ranks agreeing after each phase. A mixin of
:class:`~jmlr.train.trainer.JointTrainer`; the file format is :mod:`jmlr.train.checkpoint`'s."""
from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path

import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)

from jmlr.config import to_dict
from jmlr.core.fs import write_error
from jmlr.reader.loading import full_state_dict
from jmlr.retriever import DualEncoder
from jmlr.train import checkpoint as ckpt
from jmlr.train.budget import all_ranks_agree
from jmlr.train.guards import NonFiniteError, check_finite_weights
from jmlr.train.run_folder import check_steps_left, trim_metrics

logger = logging.getLogger("jmlr.train.trainer")

__all__ = ["CheckpointMixin"]


class CheckpointMixin:
    """``save_checkpoint`` / ``load_checkpoint`` of the joint trainer (it sets every attribute used here)."""

    # ------------------------------------------------------------------ agreement between ranks
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
            reader_state = full_state_dict(self.reader.model)
            optim_state = get_optimizer_state_dict(self.model, self.optim.optimizer, options=StateDictOptions(
                full_state_dict=True, cpu_offload=True))
        stack, tmp, err = None, None, None
        if self.is_main:
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
                folder = ckpt.verified(ckpt.latest_or_raise(self.out) if str(folder) == "latest" else folder)
            except Exception as e:  # noqa: BLE001 (told to every rank, then raised)
                problem = e
        folder, failed = self._from_main((str(folder), problem is not None))
        if failed:
            raise problem if problem is not None else RuntimeError(f"resume={folder}: rank 0 could not use this "
                                                                   "checkpoint (its error names the cause)")
        folder = Path(folder)
        state = ckpt.load_state(folder)
        check_steps_left(int(state["step"]), self.cfg, folder)
        saved_strategy = state.get("strategy", "ddp")
        if saved_strategy != ("fsdp" if self.sharded else "ddp"):
            raise ValueError(f"resume={folder}: the checkpoint was written with dist.strategy={saved_strategy} on "
                             f"{state.get('world', 1)} rank(s); resume it the same way")
        self.reader.load_weights(folder / "reader")  # in place, sharded or not: no second reader
        self._load_retriever_weights(folder / "retriever")
        if self.sharded:
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
        saved = DualEncoder.from_pretrained(folder, shared=self.retriever.shared)
        self.retriever.load_state_dict(saved.state_dict())
        del saved
