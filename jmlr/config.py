"""Typed dataclass configs (Tevatron-style): help text per field, loaded from YAML, overridden by ``key=value``.

>>> cfg = load_config(None, ["optim.steps=20", "loss.name=jmlr_rank", "reader.lora=true"])
>>> cfg.optim.steps, cfg.loss.name, cfg.reader.lora
(20, 'jmlr_rank', True)

Unknown keys are errors that name the key and suggest the closest known one.
"""
from __future__ import annotations

import dataclasses
import difflib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from jmlr.config_checks import validate
from jmlr.core.fields import coerce, config_field, field_types, is_section
from jmlr.core.precision import PRECISIONS

logger = logging.getLogger(__name__)
_f = config_field  # short local name; other packages import config_field from jmlr.core.fields


@dataclass
class DataConfig:
    format: str = _f("jmlr", "QA file format for train/dev/test (see jmlr.data.load_qa): jmlr, medqa, amboss, "
                             "medmcqa, mmlu, pubmedqa, huatuo, jsonl")
    train: str = _f("demo", "training QA file, or 'demo' for the bundled demo split")
    dev: str = _f("demo", "dev QA file (evaluated during training), or 'demo'")
    test: str = _f("demo", "held-out QA file for the final evaluation, or 'demo'")
    corpus: str = _f("demo", "corpus file/folder (JSONL, TSV, text, markdown folder), or 'demo'")
    corpus_format: Optional[str] = _f(None, "corpus format; inferred from the extension when empty")
    max_train: Optional[int] = _f(None, "use at most this many training questions")
    max_eval: Optional[int] = _f(None, "evaluate on at most this many dev/test questions")
    long_prompts: str = _f("refuse", "a question whose prompt (question + options + answer, no passages) exceeds "
                                     "reader.max_length: refuse (error before training, naming the longest) or "
                                     "truncate (cut the question text to fit)")
    mapping: dict = _f({}, "QA field -> source column for formats jsonl and hf (a save_to_disk folder), e.g. "
                           "{question: q, options: [opa, opb, opc, opd], answer: cop}")
    corpus_mapping: dict = _f({}, "corpus field -> column for corpus_format hf (or jsonl): {id: pmid, text: abstract, "
                                  "title: heading}")


@dataclass
class RetrieverConfig:
    model: str = _f("minilm", "encoder: a jmlr alias (minilm), a sentence-transformers folder or an HF encoder")
    shared_towers: bool = _f(True, "query and doc towers share weights (False: two copies)")
    pooling: Optional[str] = _f(None, "pooling over token states: mean, cls, max, mean_sqrt_len_tokens, weightedmean, "
                                      "lasttoken ('cls+mean' concatenates); empty = the model folder's own, else mean")
    normalize: bool = _f(True, "L2-normalise embeddings (cosine scores)")
    max_length: int = _f(128, "max tokens per query or passage for the encoder")
    train_docs: bool = _f(True, "train the doc tower too; False is query-side-only mode (no refresh needed)")
    frozen: bool = _f(False, "freeze the whole retriever: RAG with a fixed retriever, only the reader trains")
    lr: float = _f(2e-5, "learning rate of the retriever parameter group")
    temperature: float = _f(0.05, "the one retrieval temperature tau: every retriever softmax(s/tau) of the run, the "
                                  "joint loss's (given to it as its temperature) and index.sample_m's sampling; the "
                                  "scores s are raw inner products (see docs/losses.md)")
    query_prefix: Optional[str] = _f(None, "text put before every query (e5: 'query: '); empty = the model's "
                                           "sentence-transformers 'query' prompt, if any")
    doc_prefix: Optional[str] = _f(None, "text put before every passage (e5: 'passage: '); empty = the model's "
                                         "'document'/'passage' prompt, if any")
    model_prompts: bool = _f(True, "use the model's sentence-transformers query/document prompts where "
                                   "query_prefix/doc_prefix are empty (false: no prefix)")


@dataclass
class ModelLoadConfig:
    """How a causal LM is loaded and adapted: the fields ``reader.*`` (joint training) and the stages' ``model.*``
    share, declared once."""

    lora: bool = _f(False, "train LoRA adapters (peft) instead of all weights")
    lora_r: int = _f(8, "LoRA rank")
    lora_alpha: int = _f(16, "LoRA alpha")
    lora_dropout: float = _f(0.0, "LoRA dropout on the adapter inputs")
    lora_target_modules: list = _f([], "modules that get LoRA adapters: names (q_proj,k_proj,v_proj,o_proj,...) or "
                                       "all-linear; empty = peft's default for the architecture")
    lora_train_lm_head: bool = _f(False, "with LoRA, also train the LM head in full (peft modules_to_save), as JMLR did")
    torch_dtype: Optional[str] = _f(None, "weights dtype at load: bf16, fp16, fp32 or auto (empty: fp32)")
    attn_implementation: Optional[str] = _f(None, "attention kernel: eager, sdpa, flash_attention_2 (empty: "
                                                  "transformers' choice)")
    quantization: str = _f("none", "load the weights in 4bit (QLoRA, NF4) or 8bit through bitsandbytes (needs "
                                   "lora=true and a CUDA GPU), or none")
    gradient_checkpointing: bool = _f(False, "recompute activations in backward to save memory")
    trust_remote_code: bool = _f(False, "allow custom model code from the model folder (off by default)")


@dataclass
class ReaderConfig(ModelLoadConfig):
    model: str = _f("smollm2-135m", "causal LM: a jmlr alias (smollm2-135m), an HF folder or name")
    template: str = _f("jmlr", "prompt template: jmlr, chat or freetext")
    max_length: int = _f(384, "max prompt+answer tokens per sequence (passages are truncated first)")
    target: str = _f("letter", "MCQ answer target: letter (' B'), letter_text (' B. text') or option_text "
                                "(cloze: options not listed, each option's text scored)")
    lr: float = _f(2e-5, "learning rate of the reader parameter group")


@dataclass
class IndexConfig:
    type: str = _f("exact", "index backend: exact (fused top-k kernels), flat, ivf, ivfpq, hnsw, sq8, sq16, or any "
                            "faiss index_factory string such as 'IVF4096,PQ64x4fs' or 'HNSW32,Flat'")
    top_k: int = _f(4, "K: passages retrieved per question and given to the reader")
    over_retrieve: int = _f(0, "K' > K: retrieve K' from the (possibly stale) index, rerank with the current "
                               "doc tower, keep K (0 = off)")
    sample_m: int = _f(0, "m < K: sample m of the K candidates from softmax(s) per step as JMLR does (0 = off)")
    fixed_candidates: bool = _f(False, "JMLR as released: search every training question's K' candidates once, with the "
                                       "initial retriever at the first step, and reuse them all run (no search after)")
    storage: str = _f("fp32", "stored embedding precision for the exact index: fp32, fp16, bf16, int8")
    embedding_cache: bool = _f(False, "reuse the initial corpus embeddings from $JMLR_CACHE/embeddings when the doc "
                                      "tower, corpus and precision are the same (the first run writes them)")
    params: dict = _f({}, "faiss parameters: nlist, pq_m, hnsw_m, ef_construction (building), nprobe, efSearch "
                          "(searching) or any faiss ParameterSpace name, e.g. {nprobe: 64}")


@dataclass
class RefreshConfig:
    every: int = _f(0, "refresh the index every R optimizer steps (0 = never, unless schedule/staleness)")
    schedule: str = _f("", "piecewise refresh period, e.g. '0-1000:500,1000-:1000'")
    staleness_threshold: Optional[float] = _f(None, "refresh when stale-vs-fresh Recall@k on the probe set "
                                                   "drops below this")
    check_every: Optional[int] = _f(None, "with staleness_threshold: measure staleness every this many steps "
                                          "(>= 1); empty = half of refresh.every, or 25 when every is 0")
    asynchronous: bool = _f(True, "re-encode in the background and swap between steps (False: blocking)")
    probe_size: int = _f(256, "passages in the staleness probe set")
    budget: float = _f(0.0, "passages re-encoded per refresh: a fraction (0 < b < 1) or a count (>= 1) of the corpus, "
                            "chosen from the recently retrieved pools, their neighbours and a random slice; "
                            "0 = re-encode the whole corpus every time")
    full_every: int = _f(0, "with a budget: a full re-encode when this many steps have passed since the last full "
                            "one (0 = never after the initial build)")
    neighbours: int = _f(4, "with a budget: served-index neighbours re-encoded per retrieved passage")
    coverage: float = _f(0.2, "with a budget: the share of it kept for a random slice of the corpus")


@dataclass
class LossConfig:
    name: str = _f("rag_sequence", "joint loss: rag_sequence, rag_token, jmlr_rank, pdist, emdr2, lsr, loop")
    options: dict = _f({}, "extra keyword arguments of the loss class (its temperature is retriever.temperature; "
                           "the reader-side temperature of pdist, lsr and loop is target_temperature)")


@dataclass
class OptimConfig:
    steps: int = _f(200, "optimizer steps")
    batch_size: int = _f(4, "questions per micro-batch")
    grad_accum: int = _f(1, "micro-batches per optimizer step")
    warmup_steps: int = _f(10, "linear warmup steps")
    max_time_s: float = _f(0.0, "stop training before a step would end past this many seconds of the training loop "
                                "(0 = no limit), like Lightning's max_time; the schedule stays planned for optim.steps")
    schedule: str = _f("linear", "learning-rate schedule after warmup: linear, cosine or constant")
    nonfinite: str = _f("skip", "a step whose loss or gradient is NaN/inf: skip it (no update, counted and logged), "
                                "raise at once, or ignore (apply it anyway)")
    max_nonfinite_skips: int = _f(5, "with nonfinite=skip, raise after this many consecutive skipped steps")
    max_grad_norm: float = _f(1.0, "gradient clipping norm (0 = off)")
    weight_decay: float = _f(0.0, "AdamW weight decay")
    precision: str = _f("auto", "autocast precision: auto (bf16 where the device runs it natively: CUDA with bf16, "
                                "or a CPU with avx512_bf16/amx_bf16; else fp32), fp32, bf16 or fp16")


@dataclass
class DistConfig:
    strategy: str = _f("ddp", "how the joint model is spread over torch.distributed ranks (torchrun / accelerate "
                              "launch): ddp (every rank holds the full model) or fsdp (the reader is sharded with "
                              "FSDP2 fully_shard, the retriever replicated); deepspeed is refused, use fsdp")
    find_unused_parameters: Optional[bool] = _f(None, "DDP only: empty = auto (probe one backward at setup and turn "
                                                      "it on only when a trainable parameter gets no gradient, e.g. "
                                                      "a BERT pooler under mean pooling, or a loss that leaves one "
                                                      "model unused), true or false")


@dataclass
class TrainConfig:
    output_dir: str = _f("runs/jmlr", "run folder: metrics, checkpoints, plots")
    overwrite: bool = _f(False, "a fresh run into an output_dir that already holds files replaces the old run's "
                                "outputs (else it refuses; use resume=latest to continue it)")
    seed: int = _f(0, "random seed for torch, numpy and python")
    eval_every: int = _f(50, "evaluate on dev every N steps (0 = only at the end)")
    checkpoint_every: int = _f(0, "checkpoint every N steps (0 = only at the end)")
    log_every: int = _f(1, "log training metrics every N steps")
    resume: Optional[str] = _f(None, "checkpoint folder to resume from ('latest' = newest in output_dir)")
    report_to: list = _f(["jsonl"], "where metrics go: jsonl (output_dir/metrics.jsonl) and/or accelerate trackers: "
                                    "tensorboard, wandb, trackio, mlflow, comet_ml, aim, clearml, dvclive, swanlab")
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "data files"})
    retriever: RetrieverConfig = field(default_factory=RetrieverConfig, metadata={"help": "retriever"})
    reader: ReaderConfig = field(default_factory=ReaderConfig, metadata={"help": "reader"})
    index: IndexConfig = field(default_factory=IndexConfig, metadata={"help": "index and retrieval"})
    refresh: RefreshConfig = field(default_factory=RefreshConfig, metadata={"help": "index refresh policy"})
    loss: LossConfig = field(default_factory=LossConfig, metadata={"help": "joint loss"})
    optim: OptimConfig = field(default_factory=OptimConfig, metadata={"help": "optimisation"})
    dist: DistConfig = field(default_factory=DistConfig, metadata={"help": "multi-rank training (DDP / FSDP)"})


# ----------------------------------------------------------------------------------------------- helpers

def all_keys(cls=TrainConfig, prefix: str = "") -> list[str]:
    """Every dotted key a config class accepts."""
    keys = []
    for name, tp in field_types(cls).items():
        if is_section(tp):
            keys += all_keys(tp, prefix + name + ".")
        else:
            keys.append(prefix + name)
    return keys


RENAMED = {
    "bf16": "precision (auto | fp32 | bf16 | fp16; auto picks bf16 only where the hardware runs it natively)",
}
"""Keys that were renamed (last component of the dotted key) and what replaces them."""

REMOVED = {
    "loss.reader_temperature": "it was never read; the reader-side temperature of the distillation losses (pdist, "
                               "lsr, loop) is loss.options.target_temperature, and the retriever's is "
                               "retriever.temperature",
}
"""Keys that were removed (full dotted key) and what to use instead."""


def _unknown(key: str, where: str, known: list[str]) -> ValueError:
    if key in REMOVED:
        return ValueError(f"config key '{key}'{where} was removed: {REMOVED[key]}")
    last = key.rsplit(".", 1)[-1]
    if last in RENAMED:
        new = key[: len(key) - len(last)] + RENAMED[last]
        return ValueError(f"config key '{key}'{where} was replaced by '{new}'")
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(sorted(known))}"
    return ValueError(f"unknown config key '{key}'{where}{hint}")


def _check_choice(key: str, value: Any, where: str = "") -> Any:
    """Values of keys with a fixed set of choices are checked when set (before any model loads)."""
    if key.rsplit(".", 1)[-1] == "precision":
        if str(value).lower() not in PRECISIONS:
            raise ValueError(f"config key '{key}'{where} expects one of {', '.join(PRECISIONS)}, got {value!r}")
        return str(value).lower()
    return value


def _apply(obj, mapping: dict, prefix: str, where: str, root=None) -> None:
    root = root or type(obj)
    hints = field_types(type(obj))
    for k, v in mapping.items():
        key = prefix + str(k)
        if k not in hints:
            raise _unknown(key, where, all_keys(root))
        tp = hints[k]
        if is_section(tp):
            if not isinstance(v, dict):
                raise ValueError(f"config section '{key}'{where} must be a mapping, got {v!r}")
            _apply(getattr(obj, k), v, key + ".", where, root)
        else:
            setattr(obj, k, _check_choice(key, coerce(v, tp, key), where))


def set_value(cfg: TrainConfig, dotted: str, value: Any) -> None:
    """Set one dotted key (``optim.lr``) on ``cfg``, coercing ``value`` to the field's type."""
    parts = dotted.split(".")
    obj = cfg
    for i, p in enumerate(parts):
        hints = field_types(type(obj))
        if p not in hints:
            raise _unknown(dotted, "", all_keys(type(cfg)))
        if i == len(parts) - 1:
            if is_section(hints[p]):
                raise ValueError(f"'{dotted}' is a section; set one of its keys, e.g. '{dotted}."
                                 f"{next(iter(field_types(hints[p])))}=...'")
            setattr(obj, p, _check_choice(dotted, coerce(value, hints[p], dotted)))
        else:
            if not is_section(hints[p]):
                raise _unknown(dotted, "", all_keys(type(cfg)))
            obj = getattr(obj, p)


def _drop_removed(data: dict, where: str, prefix: str = "") -> dict:
    """``data`` without the keys of :data:`REMOVED`, each dropped with a warning (a run's own saved config)."""
    out = {}
    for k, v in data.items():
        key = prefix + str(k)
        if key in REMOVED:
            logger.warning("config key '%s'%s was removed and is ignored in a saved run config: %s", key, where,
                           REMOVED[key])
            continue
        out[k] = _drop_removed(v, where, key + ".") if isinstance(v, dict) else v
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                cls=TrainConfig, saved: bool = False) -> TrainConfig:
    """Defaults, then the YAML file at ``path`` (if any), then ``key=value`` overrides, in that order.

    ``saved=True`` reads the ``config.yaml`` a run wrote: a key removed since (:data:`REMOVED`) is dropped with a
    warning instead of refused, so the runs of older versions still load. Written by hand, such a key is an
    error that says what replaces it."""
    import yaml

    cfg = cls()
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"config file not found: {p}")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"{p}: not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{p}: expected a mapping of config keys at the top level, got {type(data).__name__}")
        _apply(cfg, _drop_removed(data, f" in {p}") if saved else data, "", f" in {p}")
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key=value (e.g. optim.steps=100)")
        key, value = item.split("=", 1)
        key = key.strip()
        try:
            value = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            pass
        set_value(cfg, key, value)
    if isinstance(cfg, TrainConfig):
        validate(cfg)
    return cfg


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg, path: str | Path) -> None:
    import yaml

    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def describe(cls=TrainConfig, prefix: str = "") -> str:
    """One line per key with type, default and help (for ``--help`` output)."""
    lines = []
    inst = cls()
    for f in dataclasses.fields(cls):
        tp = field_types(cls)[f.name]
        if is_section(tp):
            lines.append(describe(tp, prefix + f.name + "."))
        else:
            lines.append(f"  {prefix + f.name:<34} {getattr(inst, f.name)!r:<16} {f.metadata.get('help', '')}")
    return "\n".join(lines)
