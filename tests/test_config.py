from pathlib import Path

import pytest

from jmlr.config import TrainConfig, all_keys, describe, load_config, save_config

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_and_overrides():
    cfg = load_config(None, ["optim.steps=7", "reader.lora=true", "retriever.lr=1e-4", "data.max_train=none",
                             "loss.options={\"margin\": 2}"])
    assert isinstance(cfg, TrainConfig)
    assert cfg.optim.steps == 7 and cfg.reader.lora is True and cfg.retriever.lr == pytest.approx(1e-4)
    assert cfg.data.max_train is None and cfg.loss.options == {"margin": 2}


def test_yaml_then_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("seed: 3\noptim:\n  steps: 11\n  batch_size: 2\nloss:\n  name: pdist\n")
    cfg = load_config(f, ["optim.steps=12"])
    assert (cfg.seed, cfg.optim.steps, cfg.optim.batch_size, cfg.loss.name) == (3, 12, 2, "pdist")


def test_round_trip(tmp_path):
    cfg = load_config(None, ["optim.steps=5", "index.top_k=6"])
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg


@pytest.mark.parametrize("bad,needle", [
    ("optim.stepz=3", "did you mean 'optim.steps'"),
    ("optim.steps=abc", "expects int"),
    ("reader.lora=maybe", "true/false"),
    ("optim=3", "is a section"),
    ("nonsense", "key=value"),
])
def test_bad_overrides(bad, needle):
    with pytest.raises(ValueError, match=needle.replace("(", r"\(")):
        load_config(None, [bad])


def test_unknown_yaml_key_names_file_and_suggests(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("optim:\n  learning_rat: 3\nretriver:\n  lr: 1\n")
    with pytest.raises(ValueError, match=r"optim.learning_rat.*c.yaml"):
        load_config(f)
    f.write_text("retriver:\n  lr: 1\n")
    with pytest.raises(ValueError, match="did you mean 'retriever"):
        load_config(f)


def test_missing_and_non_mapping_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "nope.yaml")
    f = tmp_path / "l.yaml"
    f.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="mapping"):
        load_config(f)


def test_every_key_has_help():
    text = describe()
    for key in all_keys():
        assert key in text
    import dataclasses
    def walk(cls):
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help text"
            if dataclasses.is_dataclass(f.type if isinstance(f.type, type) else None):
                walk(f.type)
    walk(TrainConfig)


def test_every_shipped_yaml_loads():
    files = sorted(list((ROOT / "examples").rglob("*.yaml")) + list((ROOT / "configs").rglob("*.yaml")) + \
        list((ROOT / "jmlr" / "configs").rglob("*.yaml")))
    if not files:
        pytest.skip("no YAML configs shipped yet under examples/ or configs/")
    for f in files:
        if "stages" in f.relative_to(ROOT).parts:
            from jmlr.train.stages import config_class_for_file, load_stage_config

            load_stage_config(config_class_for_file(f), f)
        else:
            load_config(f)


def test_removed_reader_temperature_is_refused_with_what_to_use(tmp_path):
    f = tmp_path / "old.yaml"
    f.write_text("loss:\n  name: pdist\n  reader_temperature: 2.0\n")
    with pytest.raises(ValueError, match=r"'loss.reader_temperature' in .*old.yaml was removed.*"
                                         r"loss.options.target_temperature.*retriever.temperature"):
        load_config(f)
    with pytest.raises(ValueError, match=r"'loss.reader_temperature' was removed.*target_temperature"):
        load_config(None, ["loss.reader_temperature=2"])
    assert "loss.reader_temperature" not in all_keys()


def test_one_temperature_a_loss_temperature_option_names_retriever_temperature():
    with pytest.raises(ValueError, match=r"loss.options.temperature=0.5.*set retriever.temperature instead"):
        load_config(None, ['loss.options={"temperature": 0.5}'])
    cfg = load_config(None, ['loss.options={"target_temperature": 0.5}', "retriever.temperature=0.1"])
    from jmlr.train.joint_model import make_loss

    cfg.loss.name = "pdist"
    loss_fn = make_loss(cfg)
    assert (loss_fn.temperature, loss_fn.target_temperature) == (0.1, 0.5)


def test_a_saved_run_config_with_a_removed_key_still_loads(tmp_path, caplog):
    """A run of an older version wrote loss.reader_temperature into its config.yaml; `jmlr eval --run` reads it."""
    f = tmp_path / "config.yaml"
    f.write_text("loss:\n  name: pdist\n  reader_temperature: 1.0\noptim:\n  steps: 7\n")
    with caplog.at_level("WARNING", logger="jmlr.config"):
        cfg = load_config(f, saved=True)
    assert cfg.loss.name == "pdist" and cfg.optim.steps == 7
    assert "loss.reader_temperature" in caplog.text and "ignored" in caplog.text
    with pytest.raises(ValueError, match="was removed"):  # a hand-written config is still refused
        load_config(f)
