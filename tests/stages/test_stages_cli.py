"""``jmlr pretrain|sft|qgen|dpo``: registered, configs load with their own keys, tiny end-to-end runs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from jmlr.train.stages import STAGE_CONFIGS, config_class_for_file, load_stage_config

ROOT = Path(__file__).resolve().parents[2]
STAGE_YAMLS = sorted((ROOT / "configs" / "stages").glob("*.yaml"))


def test_subcommands_registered():
    from jmlr.cli import build_parser

    parser = build_parser()
    for name in STAGE_CONFIGS:
        args = parser.parse_args([name, "--config", "x.yaml", "optim.steps=3"] if name != "qgen"
                                 else [name, "per_passage=2"])
        assert callable(args.func)


@pytest.mark.parametrize("path", STAGE_YAMLS, ids=lambda p: p.name)
def test_example_stage_configs_load(path):
    cls = config_class_for_file(path)
    cfg = load_stage_config(cls, path)
    assert isinstance(cfg, cls)
    for key in ("instructions", "progressive", "pairs"):  # referenced example files exist
        value = getattr(cfg.data, key, "")
        if value:
            assert (ROOT / value).is_file(), value


def test_all_four_stage_yamls_present():
    assert {config_class_for_file(p) for p in STAGE_YAMLS} == set(STAGE_CONFIGS.values())
    with pytest.raises(ValueError, match="cannot tell the stage"):
        config_class_for_file("train.yaml")


def test_unknown_keys_suggest_stage_keys(tmp_path):
    from jmlr.train.stages import DPOConfig, SFTConfig

    with pytest.raises(ValueError, match=r"unknown config key 'bta'.*did you mean 'beta'"):
        load_stage_config(DPOConfig, None, ["bta=0.2"])
    f = tmp_path / "sft.yaml"
    f.write_text("data:\n  passage: gold\n")
    with pytest.raises(ValueError, match=r"'data.passage' in .*sft.yaml.*did you mean 'data.passages'"):
        load_stage_config(SFTConfig, f)
    cfg = load_stage_config(SFTConfig, None, ["optim.steps=7", "data.passages=gold", "model.lora=true"])
    assert (cfg.optim.steps, cfg.data.passages, cfg.model.lora) == (7, "gold", True)


def _main(argv, capsys):
    from jmlr.cli import main

    rc = main(argv)
    cap = capsys.readouterr()
    out = cap.out.strip().splitlines()
    return rc, json.loads(out[-1]) if out and rc == 0 else cap.err


def test_cli_runs_each_stage(tiny_reader_dir, tmp_path, capsys):
    common = [f"model.model={tiny_reader_dir}", "model.max_length=256", "optim.steps=2", "optim.batch_size=2",
              "optim.precision=fp32", "--no-progress"]
    cases = tmp_path / "cases.jsonl"
    cases.write_text((ROOT / "configs/stages/data/cases.jsonl").read_text())
    rc, s = _main(["sft", f"output_dir={tmp_path}/sft", "data.qa=", "data.passages=none",
                   f"data.instructions={ROOT}/configs/stages/data/instructions.jsonl",
                   f"data.progressive={cases}", *common], capsys)
    assert rc == 0 and s["stage"] == "sft" and s["steps"] == 2 and Path(s["model_dir"]).is_dir()
    assert s["pairs"] == 4 + 5
    rc, s = _main(["pretrain", f"output_dir={tmp_path}/pt", "data.corpus=",
                   f"data.qa={ROOT}/configs/stages/data/cases.jsonl", "data.qa_format=jmlr", *common], capsys)
    assert rc == 2 and "cases.jsonl, line 1" in s  # not a QA file: a clean error naming the file and line
    txt = tmp_path / "corpus.txt"
    txt.write_text("Aspirin inhibits platelets.\n\nMetformin lowers glucose.\n\nWarfarin needs INR checks.\n")
    rc, s = _main(["pretrain", f"output_dir={tmp_path}/pt", f"data.corpus={txt}", "data.window=16", *common], capsys)
    assert rc == 0 and s["tokens"] == 2 * 2 * 16
    rc, s = _main(["dpo", f"output_dir={tmp_path}/dpo", f"data.pairs={ROOT}/configs/stages/data/dpo_pairs.jsonl",
                   *common], capsys)
    assert rc == 0 and s["stage"] == "dpo" and abs(s["first_loss"] - 0.6931) < 1e-3
    rc, s = _main(["qgen", f"output_dir={tmp_path}/qg", f"model.model={tiny_reader_dir}", f"data.corpus={txt}",
                   "data.min_chars=10", "max_new_tokens=8", "--no-progress"], capsys)
    assert rc == 0 and s["generated"] == 3 and set(s["rejected"]) >= {"unparsable", "duplicate_options"}
    rc, err = _main(["dpo", f"output_dir={tmp_path}/dpo2", *common], capsys)
    assert rc == 2 and "set data.pairs" in err
