"""The dist.* keys: the strategy is checked before anything loads, DeepSpeed is refused naming FSDP."""
import pytest

from jmlr.config import load_config


def test_dist_defaults_and_overrides():
    cfg = load_config(None, [])
    assert cfg.dist.strategy == "ddp" and cfg.dist.find_unused_parameters is None  # None: probed at setup
    cfg = load_config(None, ["dist.strategy=fsdp", "dist.find_unused_parameters=false"])
    assert cfg.dist.strategy == "fsdp" and cfg.dist.find_unused_parameters is False


def test_deepspeed_is_refused_naming_fsdp():
    with pytest.raises(ValueError, match=r"dist.strategy=deepspeed is not supported: use dist.strategy=fsdp"):
        load_config(None, ["dist.strategy=deepspeed"])


def test_an_unknown_strategy_is_named():
    with pytest.raises(ValueError, match=r"dist.strategy must be one of ddp, fsdp, got 'zero3'"):
        load_config(None, ["dist.strategy=zero3"])
