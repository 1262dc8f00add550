"""Defect 4: every config value is range-checked in the config layer, naming the key, before any model loads."""
import pytest

from jmlr.config import load_config

BAD = [
    ("optim.grad_accum=0", "optim.grad_accum must be >= 1, got 0"),
    ("optim.steps=0", "optim.steps must be >= 1, got 0"),
    ("optim.steps=-5", "optim.steps must be >= 1"),
    ("reader.lr=-1e-4", "reader.lr must be >= 0"),
    ("retriever.lr=-1", "retriever.lr must be >= 0"),
    ("optim.warmup_steps=-1", "optim.warmup_steps must be >= 0"),
    ("checkpoint_every=-1", "checkpoint_every must be >= 0"),
    ("data.max_train=-1", "data.max_train must be >= 1, got -1"),
    ("data.max_eval=0", "data.max_eval must be >= 1, got 0"),
    ("optim.batch_size=0", "optim.batch_size must be >= 1"),
    ("index.top_k=-1", "index.top_k must be >= 1"),
    ("retriever.temperature=0", "retriever.temperature must be > 0"),
    ("optim.max_grad_norm=-1", "optim.max_grad_norm must be >= 0"),
    ("optim.nonfinite=maybe", "optim.nonfinite must be one of skip, raise, ignore"),
    ("optim.schedule=cosin", "optim.schedule must be one of linear, cosine, constant"),
    ("refresh.staleness_threshold=1.5", "refresh.staleness_threshold must be in (0, 1]"),
    ("retriever.lr=nan", "retriever.lr must be a finite number"),
]


@pytest.mark.parametrize("override,message", BAD)
def test_a_bad_value_is_refused_naming_the_key(override, message):
    with pytest.raises(ValueError, match="invalid config: .*" + message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):
        load_config(None, [override])


def test_every_bad_key_is_named_at_once():
    with pytest.raises(ValueError) as e:
        load_config(None, ["optim.grad_accum=0", "index.top_k=0"])
    assert "optim.grad_accum" in str(e.value) and "index.top_k" in str(e.value)


def test_good_values_pass():
    cfg = load_config(None, ["optim.steps=1", "reader.lr=0", "data.max_train=1", "optim.warmup_steps=0"])
    assert cfg.optim.steps == 1 and cfg.data.max_train == 1


def test_the_trainer_refuses_before_any_model_loads(tmp_path):
    from jmlr.train.trainer import JointTrainer

    cfg = load_config(None, [f"output_dir={tmp_path / 'run'}", "retriever.model=/nonexistent/encoder"])
    cfg.optim.grad_accum = 0  # set in Python, past load_config
    with pytest.raises(ValueError, match="optim.grad_accum must be >= 1"):
        JointTrainer.from_config(cfg)
    assert not (tmp_path / "run").exists()


def test_a_programmatic_config_is_checked_by_the_trainer(make_trainer, tmp_path):
    from jmlr.config import TrainConfig
    from jmlr.train.trainer import JointTrainer

    t = make_trainer(tmp_path / "ok", dev=False)
    cfg = TrainConfig(output_dir=str(tmp_path / "run"))
    cfg.optim.grad_accum = 0
    with pytest.raises(ValueError, match="optim.grad_accum must be >= 1"):
        JointTrainer(cfg, t.retriever, t.reader, t.corpus, t.train_data)
