"""Refresh policies built from the training config (``policy_from_config``), and ``refresh.check_every``."""
import pytest

from jmlr.config import RefreshConfig, load_config
from jmlr.index import AsyncRefresher, parse_policy, policy_from_config
from jmlr.index.refresh_policy import AnyOf, EveryN, Never, Schedule, StalenessTrigger

# (config fields, the policy written out by hand, the spec string the config used to be turned into)
CASES = [
    ({}, Never(), "never"),
    ({"every": 200}, EveryN(200), "every:200"),
    ({"every": 100, "staleness_threshold": 0.9},
     AnyOf([EveryN(100), StalenessTrigger(min_recall=0.9, check_every=50)]), "every:100|recall<0.9@50"),
    ({"schedule": "0-1000:500,1000-:1000", "every": 300, "staleness_threshold": 0.8},
     AnyOf([Schedule([(0, 1000, 500), (1000, None, 1000)]), StalenessTrigger(min_recall=0.8, check_every=150)]),
     "0-1000:500,1000-:1000|recall<0.8@150"),
    ({"staleness_threshold": 0.95}, StalenessTrigger(min_recall=0.95, check_every=25), "recall<0.95@25"),
    ({"every": 1, "staleness_threshold": 0.9},
     AnyOf([EveryN(1), StalenessTrigger(min_recall=0.9, check_every=1)]), "every:1|recall<0.9@1"),
    ({"every": 100, "staleness_threshold": 0.9, "check_every": 7},
     AnyOf([EveryN(100), StalenessTrigger(min_recall=0.9, check_every=7)]), "every:100|recall<0.9@7"),
    ({"staleness_threshold": 0.5, "check_every": 3}, StalenessTrigger(min_recall=0.5, check_every=3),
     "recall<0.5@3"),
]


@pytest.mark.parametrize("fields, expected, spec", CASES, ids=[c[2] for c in CASES])
def test_policy_from_config_equals_the_hand_written_policy_and_the_old_string_route(fields, expected, spec):
    policy = policy_from_config(RefreshConfig(**fields))
    assert policy == expected
    assert parse_policy(spec) == expected, "the old route: the config written as a spec, parsed back"
    assert str(policy) == spec


def test_check_every_key_from_yaml_and_overrides(tmp_path):
    assert load_config(None, []).refresh.check_every is None
    assert load_config(None, ["refresh.check_every=12"]).refresh.check_every == 12
    assert load_config(None, ["refresh.check_every="]).refresh.check_every is None
    f = tmp_path / "cfg.yaml"
    f.write_text("refresh:\n  staleness_threshold: 0.9\n  check_every: 4\n")
    assert load_config(f).refresh.check_every == 4


@pytest.mark.parametrize("value, needle", [
    ("0", "refresh.check_every must be >= 1"),
    ("-3", "refresh.check_every must be >= 1"),
    ("abc", "'refresh.check_every' expects int"),
    ("2.5", "'refresh.check_every' expects"),
    ("true", "'refresh.check_every' expects int"),
])
def test_bad_check_every_is_a_clear_error_naming_the_key(value, needle):
    with pytest.raises(ValueError, match=needle):
        load_config(None, [f"refresh.check_every={value}"])


def test_bad_check_every_in_yaml_names_the_key(tmp_path):
    f = tmp_path / "cfg.yaml"
    f.write_text("refresh:\n  check_every: 0\n")
    with pytest.raises(ValueError, match="refresh.check_every must be >= 1"):
        load_config(f)


@pytest.fixture(scope="module")
def dual(tmp_path_factory):
    from jmlr.retriever import DualEncoder
    from jmlr.retriever.testing import tiny_encoder_dir

    return DualEncoder.from_pretrained(tiny_encoder_dir(tmp_path_factory.mktemp("enc")))


@pytest.fixture(scope="module")
def corpus():
    from jmlr.retriever.testing import random_texts

    texts = random_texts(40, seed=5)
    return [f"p{i}" for i in range(len(texts))], texts


@pytest.mark.parametrize("overrides, steps, checked", [
    (["refresh.staleness_threshold=0.5", "refresh.check_every=6"], 20, [0, 6, 12, 18]),
    (["refresh.staleness_threshold=0.5", "refresh.check_every=1"], 4, [0, 1, 2, 3]),
    (["refresh.staleness_threshold=0.5"], 60, [0, 25, 50]),  # empty: half of every=0's 50
])
def test_refresher_checks_staleness_every_check_every_steps(dual, corpus, overrides, steps, checked):
    """The doc tower does not move, so staleness stays near recall 1 (above 0.5) and no refresh starts: the checks
    fall exactly on the steps ``check_every`` apart, counted from the first call."""
    cfg = load_config(None, overrides)
    r = AsyncRefresher(dual, corpus, policy=policy_from_config(cfg.refresh), probe_size=16, probe_k=4)
    seen, measure = [], r.staleness

    def staleness(*a, **kw):
        seen.append(step)
        out = measure(*a, **kw)
        assert out["recall"] >= 0.5  # above the floor: this check starts no refresh
        return out

    r.staleness = staleness
    with r:
        for step in range(steps):
            assert not r.maybe_refresh(step)
            assert not r.in_flight
    assert seen == checked
    assert r.stats()["staleness_checks"] == len(checked) and r.version == 0
