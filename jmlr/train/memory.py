"""How much GPU memory a reader needs per GPU: weights, gradients and optimizer state (docs/distributed.md).

Byte model (per parameter, AdamW, mixed precision as accelerate and FSDP run it):

* a **trainable** parameter costs ``w`` (the weight, in ``dtype``) + ``w`` (its gradient, same dtype) + the
  optimizer state: Adam's two moments in fp32 (8 bytes) plus an fp32 master copy of the weight (4 bytes) when
  ``dtype`` is narrower than fp32. bf16: 2 + 2 + 12 = 16 bytes; fp32: 4 + 4 + 8 = 16 bytes.
* a **frozen** parameter (the LoRA base) costs its weight only: ``w`` bytes; ``nf4`` (QLoRA's 4-bit) is 4 bits
  plus the double-quantised block constants, 4.127 bits = 0.516 bytes.
* ``ddp`` keeps all of it on every GPU; ``fsdp`` (full sharding, ZeRO-3) divides all of it by ``world``.

Not counted: activations (they scale with batch x sequence length; gradient checkpointing cuts them to about
one layer's worth), FSDP's temporarily gathered layer, the CUDA context and allocator slack (about 1-2 GiB),
the retriever (MiniLM: 22.7M parameters, 0.34 GiB trained in full) and the exact index (N x d x 4 bytes per
shard, e.g. 21M x 768 fp32 over 8 GPUs: 7.5 GiB each).

>>> round(plan_memory(7e9, "full", "ddp").total_gib, 1)    # 7e9 * (2 + 2 + 12) / 2**30
104.3
>>> round(plan_memory(7e9, "full", "fsdp", world=8).total_gib, 2)
13.04
"""
from __future__ import annotations

from dataclasses import dataclass

GIB = 2 ** 30
WEIGHT_BYTES = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "int8": 1.0, "nf4": 4.127 / 8}
MODES = ("full", "lora")
STRATEGIES = ("ddp", "fsdp")


@dataclass(frozen=True)
class LlamaShape:
    """The sizes of a Llama-style decoder that fix its parameter count and its LoRA adapter size."""

    name: str
    vocab: int
    hidden: int
    intermediate: int
    layers: int
    kv_dim: int  # key/value width: kv_heads * head_dim (grouped-query attention)
    tied: bool  # LM head shares the input embedding

    @property
    def n_params(self) -> int:
        h, i, kv = self.hidden, self.intermediate, self.kv_dim
        per_layer = 2 * h * h + 2 * h * kv + 3 * h * i + 2 * h  # q, o; k, v; gate, up, down; two RMSNorms
        return self.vocab * h * (1 if self.tied else 2) + self.layers * per_layer + h

    def lora_params(self, r: int, train_lm_head: bool = False) -> int:
        """Adapter parameters of LoRA rank ``r`` on every projection (q k v o gate up down), plus the LM head
        trained in full when ``train_lm_head``."""
        h, i, kv = self.hidden, self.intermediate, self.kv_dim
        per_layer = r * (2 * (h + h) + 2 * (h + kv) + 3 * (h + i))
        return self.layers * per_layer + (self.vocab * h if train_lm_head else 0)


# The reader sizes of the table in docs/distributed.md (shapes from the models' config.json files).
READERS = (
    LlamaShape("135M (SmolLM2-135M)", 49152, 576, 1536, 30, 192, True),
    LlamaShape("1B (Llama-3.2-1B)", 128256, 2048, 8192, 16, 512, True),
    LlamaShape("7B (Llama-2-7B)", 32000, 4096, 11008, 32, 4096, False),
    LlamaShape("13B (Llama-2-13B)", 32000, 5120, 13824, 40, 5120, False),
)


@dataclass(frozen=True)
class MemoryPlan:
    """Per-GPU bytes of one configuration (see the module doc for the byte model)."""

    n_params: int
    n_trainable: int
    weights_bytes: float
    grads_bytes: float
    optimizer_bytes: float

    @property
    def total_bytes(self) -> float:
        return self.weights_bytes + self.grads_bytes + self.optimizer_bytes

    @property
    def total_gib(self) -> float:
        return self.total_bytes / GIB

    def as_dict(self) -> dict:
        return {"n_params": self.n_params, "n_trainable": self.n_trainable,
                "weights_gib": self.weights_bytes / GIB, "grads_gib": self.grads_bytes / GIB,
                "optimizer_gib": self.optimizer_bytes / GIB, "total_gib": self.total_gib}


def plan_memory(n_params: float, mode: str = "full", strategy: str = "ddp", world: int = 1, dtype: str = "bf16",
                n_trainable: float | None = None) -> MemoryPlan:
    """Per-GPU memory of weights, gradients and AdamW state for a reader of ``n_params`` parameters.

    Args:
        mode: ``full`` (every parameter trains) or ``lora`` (``n_trainable`` adapter parameters train, the
            base is frozen).
        strategy: ``ddp`` (replicated) or ``fsdp`` (fully sharded over ``world`` GPUs).
        dtype: weight dtype: ``bf16``, ``fp16``, ``fp32``; for a frozen LoRA base also ``int8`` or ``nf4``
            (QLoRA). Trainable parameters are then kept in bf16.
        n_trainable: adapter parameters for ``lora`` (e.g. :meth:`LlamaShape.lora_params`).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if dtype not in WEIGHT_BYTES:
        raise ValueError(f"dtype must be one of {sorted(WEIGHT_BYTES)}, got {dtype!r}")
    if int(world) < 1:
        raise ValueError(f"world must be >= 1, got {world}")
    if mode == "full":
        if dtype in ("int8", "nf4"):
            raise ValueError(f"dtype={dtype!r} weights do not train in full; use mode='lora' (QLoRA)")
        n_trainable, n_frozen = float(n_params), 0.0
    else:
        if n_trainable is None:
            raise ValueError("mode='lora' needs n_trainable (the adapter parameter count)")
        n_trainable, n_frozen = float(n_trainable), float(n_params)
    w_frozen = WEIGHT_BYTES[dtype]
    w_train = WEIGHT_BYTES[dtype] if dtype in ("fp32", "bf16", "fp16") else WEIGHT_BYTES["bf16"]
    master = 4.0 if w_train < 4 else 0.0
    shard = int(world) if strategy == "fsdp" else 1
    return MemoryPlan(
        n_params=int(n_params), n_trainable=int(n_trainable),
        weights_bytes=(n_frozen * w_frozen + n_trainable * w_train) / shard,
        grads_bytes=n_trainable * w_train / shard,
        optimizer_bytes=n_trainable * (8.0 + master) / shard)


def memory_table(readers=READERS, world: int = 8, lora_r: int = 16, dtype: str = "bf16") -> str:
    """The markdown table of docs/distributed.md: per-GPU GiB for each reader, full/LoRA x DDP/FSDP(world),
    plus QLoRA (nf4 base) under DDP."""
    head = (f"| reader | params | LoRA r={lora_r} params | full, DDP | full, FSDP x{world} | LoRA, DDP | "
            f"LoRA, FSDP x{world} | QLoRA (nf4), DDP |")
    rows = [head, "|" + "---|" * 8]
    for shape in readers:
        n, nl = shape.n_params, shape.lora_params(lora_r)
        cells = [plan_memory(n, "full", "ddp", 1, dtype), plan_memory(n, "full", "fsdp", world, dtype),
                 plan_memory(n, "lora", "ddp", 1, dtype, nl), plan_memory(n, "lora", "fsdp", world, dtype, nl),
                 plan_memory(n, "lora", "ddp", 1, "nf4", nl)]
        rows.append(f"| {shape.name} | {n / 1e9:.3f}B | {nl / 1e6:.1f}M | "
                    + " | ".join(f"{c.total_gib:.2f}" for c in cells) + " |")
    return "\n".join(rows)


if __name__ == "__main__":  # python -m jmlr.train.memory
    print(memory_table())
