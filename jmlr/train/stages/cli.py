"""``jmlr pretrain|sft|qgen|dpo --config FILE.yaml [key=value ...]``: one subcommand per stage recipe."""
from __future__ import annotations

import argparse
import json

_HELP = {
    "pretrain": "continued pretraining on corpus text in packed token windows",
    "sft": "supervised fine-tuning (instructions or MCQs), loss on the response only",
    "qgen": "generate MCQs from corpus passages with the LM, validated and filtered",
    "dpo": "Direct Preference Optimization on {prompt, chosen, rejected} pairs",
}
_EXAMPLES = {
    "pretrain": ["jmlr pretrain --config configs/stages/pretrain.yaml",
                 "jmlr pretrain data.corpus=pubmed.jsonl data.qa=huatuo_lite.jsonl optim.steps=1000",
                 "jmlr pretrain --config configs/stages/pretrain.yaml model.lora=true data.window=256"],
    "sft": ["jmlr sft --config configs/stages/sft.yaml",
            "jmlr sft data.qa=train.jsonl data.qa_format=medqa model.model=runs/pretrain/model",
            "jmlr sft data.qa=dev.json data.qa_format=medmcqa data.passages=gold data.corpus=medmcqa_exp.jsonl",
            "jmlr sft data.qa= data.instructions=instructions.jsonl model.template=chat",
            "jmlr sft --config configs/stages/sft.yaml checkpoint_every=50   # then, after a crash: resume=latest",
            "torchrun --nproc_per_node 2 -m jmlr.cli sft --config configs/stages/sft.yaml   # DDP, batch_size per rank"],
    "qgen": ["jmlr qgen --config configs/stages/qgen.yaml",
             "jmlr qgen data.corpus=corpus.jsonl data.max_passages=500 model.model=runs/sft/model",
             "jmlr sft data.qa=runs/qgen/questions.jsonl   # then train on what it wrote"],
    "dpo": ["jmlr dpo --config configs/stages/dpo.yaml data.pairs=prefs.jsonl",
            "jmlr dpo data.pairs=prefs.jsonl model.model=runs/sft/model beta=0.1 optim.lr=5e-7"],
}


def describe_instance(obj, prefix: str = "") -> str:
    """One line per key (type default help) from an INSTANCE, so per-stage defaults of shared sections
    (e.g. DPO's smaller learning rate) show as they really are."""
    import dataclasses

    lines = []
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            lines.append(describe_instance(v, prefix + f.name + "."))
        else:
            lines.append(f"  {prefix + f.name:<34} {v!r:<16} {f.metadata.get('help', '')}")
    return "\n".join(lines)


def add_cli(subparsers) -> None:
    """Register ``pretrain``, ``sft``, ``qgen`` and ``dpo`` on the ``jmlr`` argparse tree."""
    from . import STAGE_CONFIGS

    for name, cls in STAGE_CONFIGS.items():
        epilog = ("examples:\n" + "\n".join(f"  {e}" for e in _EXAMPLES[name]) +
                  "\n\nconfig keys (key  default  help):\n" + describe_instance(cls()))
        p = subparsers.add_parser(name, help=_HELP[name], description=_HELP[name],
                                  formatter_class=argparse.RawDescriptionHelpFormatter, epilog=epilog)
        p.add_argument("--config", default=None, help="YAML config file (defaults are used when omitted)")
        p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.steps=100")
        p.add_argument("--no-progress", action="store_true", help="no progress bars")
        p.set_defaults(func=_runner(name))


def _runner(name: str):
    def run(args) -> int:
        from . import STAGE_CONFIGS, STAGE_RUNNERS
        from .config import load_stage_config

        cfg = load_stage_config(STAGE_CONFIGS[name], args.config, args.overrides)
        summary = STAGE_RUNNERS[name](cfg, progress=not args.no_progress)
        keep = ("stage", "steps", "stopped_by", "first_loss", "final_loss", "tokens", "tokens_per_s", "flops_est",
                "wall_s", "model_dir", "generated", "accepted", "acceptance_rate", "rejected", "questions_file",
                "pairs", "output_dir")
        print(json.dumps({k: summary[k] for k in keep if k in summary}, default=float))
        return 0
    return run
