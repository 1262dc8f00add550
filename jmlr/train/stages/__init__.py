"""Stage recipes of the usual medical-LLM route, on the same Reader and data layer as joint training.

* :mod:`~jmlr.train.stages.pretrain` -- continued pretraining on corpus text in packed windows;
* :mod:`~jmlr.train.stages.sft` -- supervised fine-tuning, loss on the response only (instructions or MCQs);
* :mod:`~jmlr.train.stages.qgen` -- the LLM writes MCQs from passages, validated and filtered;
* :mod:`~jmlr.train.stages.dpo` -- Direct Preference Optimization against a frozen reference;
* :mod:`~jmlr.train.stages.progressive` -- progressive cases (later questions see earlier ones).

Each training stage has a dataclass config (``PretrainConfig``, ``SFTConfig``, ``QGenConfig``, ``DPOConfig``)
loaded by :func:`load_stage_config` from YAML + ``key=value``, a ``run_*`` function returning a summary
(wall time, tokens, FLOPs estimate), and a ``jmlr <stage> --config FILE.yaml`` command. See docs/stages.md.
Importing this package does not import torch.
"""
from __future__ import annotations

from pathlib import Path

from jmlr.core.lazy import lazy_getattr

_MODULES = {
    "batching": ["sequence_logps"],
    "config": ["StageModelConfig", "StageOptimConfig", "StageRunConfig", "load_stage_config"],
    "data_io": ["load_reader"],
    "engine": ["train_loop"],
    "dpo": ["DPOConfig", "PreferencePair", "dpo_loss", "load_preferences", "run_dpo"],
    "pretrain": ["PretrainConfig", "pack_windows", "qa_to_text", "run_pretrain"],
    "progressive": ["ProgressiveCase", "evaluate_progressive", "expand_case", "expand_cases", "load_progressive",
                    "progressive_question"],
    "qgen": ["QGenConfig", "QGenResult", "QGenSettings", "generate_questions", "parse_mcq", "run_qgen",
             "validate_mcq"],
    "sft": ["SFTConfig", "SFTExample", "encode_sft", "format_instruction", "instruction_examples",
            "load_instructions", "run_sft", "sft_examples_from_qa"],
}
_LAZY = {name: f"jmlr.train.stages.{mod}" for mod, names in _MODULES.items() for name in names}
_STAGES = {"pretrain": ("PretrainConfig", "run_pretrain"), "sft": ("SFTConfig", "run_sft"),
           "qgen": ("QGenConfig", "run_qgen"), "dpo": ("DPOConfig", "run_dpo")}
_lazy = lazy_getattr("jmlr.train.stages", _LAZY)


def __getattr__(name: str):
    """The public names, imported from their modules on first use (so importing the package stays cheap);
    ``STAGE_CONFIGS`` (stage name -> config dataclass) and ``STAGE_RUNNERS`` (stage name ->
    ``run_*(cfg, progress=...)``) import every stage."""
    if name == "STAGE_CONFIGS":
        return {stage: _lazy(c) for stage, (c, _) in _STAGES.items()}
    if name == "STAGE_RUNNERS":
        return {stage: _lazy(r) for stage, (_, r) in _STAGES.items()}
    return _lazy(name)


def config_class_for_file(path) -> type:
    """The stage config class of a YAML file named after its stage: ``sft.yaml``, ``sft_medmcqa.yaml``,
    ``dpo-small.yaml`` ... (the name up to the first ``_``, ``-`` or ``.``)."""
    stem = Path(path).name
    for sep in "_-.":
        stem = stem.split(sep, 1)[0]
    if stem not in _STAGES:
        raise ValueError(f"{path}: cannot tell the stage from the file name; expected it to start with one of "
                         f"{', '.join(_STAGES)}")
    return _lazy(_STAGES[stem][0])


__all__ = [
    "STAGE_CONFIGS", "STAGE_RUNNERS", "config_class_for_file", "load_stage_config", "StageModelConfig",
    "StageOptimConfig", "StageRunConfig", "load_reader", "sequence_logps", "train_loop",
    "PretrainConfig", "run_pretrain", "pack_windows", "qa_to_text",
    "SFTConfig", "SFTExample", "run_sft", "sft_examples_from_qa", "encode_sft", "load_instructions",
    "instruction_examples", "format_instruction",
    "QGenConfig", "QGenSettings", "QGenResult", "run_qgen", "generate_questions", "parse_mcq", "validate_mcq",
    "DPOConfig", "PreferencePair", "run_dpo", "dpo_loss", "load_preferences",
    "ProgressiveCase", "load_progressive", "expand_case", "expand_cases", "progressive_question",
    "evaluate_progressive",
]
