"""AsyncRefresher: policies, background refresh while the loop steps, equality with a synchronous build,
worker failures, staleness, query-side-only mode."""
import copy
import threading
from types import SimpleNamespace

import pytest
import torch

from jmlr.index import AsyncRefresher, ExactIndex, RefreshError, parse_policy
from jmlr.index.refresh import AnyOf, EveryN, Never, Schedule, StalenessTrigger


@pytest.fixture(scope="module")
def enc_dir(tmp_path_factory):
    from jmlr.retriever.testing import tiny_encoder_dir

    return tiny_encoder_dir(tmp_path_factory.mktemp("enc"))


@pytest.fixture(scope="module")
def corpus():
    from jmlr.retriever.testing import random_texts

    texts = random_texts(150, seed=11)
    return [f"p{i}" for i in range(len(texts))], texts


@pytest.fixture()
def dual(enc_dir):
    from jmlr.retriever import DualEncoder

    return DualEncoder.from_pretrained(enc_dir)


def train_step(dual, texts, lr=0.05):
    """One SGD step that moves the (shared) towers: pull pairs of passages together."""
    opt = torch.optim.SGD([p for p in dual.parameters() if p.requires_grad], lr=lr)
    loss = -(dual.embed_queries(texts[:6]) * dual.embed_docs(texts[6:12])).sum()
    opt.zero_grad()
    loss.backward()
    opt.step()


def sync_build(enc_dir, doc_state, corpus, dim):
    """A fresh synchronous build from given doc-tower weights."""
    from jmlr.retriever import DualEncoder

    fresh = DualEncoder.from_pretrained(enc_dir)
    fresh.doc_model.load_state_dict(doc_state)
    ids, texts = corpus
    index = ExactIndex(dim)
    index.add(ids, fresh.encode_docs(texts, progress=False))
    return index, fresh


def assert_same_results(a, b, queries, k=10):
    s1, i1 = a.search(queries, k)
    s2, i2 = b.search(queries, k)
    torch.testing.assert_close(s1, s2, atol=1e-4, rtol=1e-4)
    same = (i1 == i2).mean()
    assert same >= 0.99, f"only {same:.3f} of the top-{k} ids agree"


# ------------------------------------------------------------------------------------------ policies

def test_parse_policy_forms():
    assert isinstance(parse_policy(None), Never) and isinstance(parse_policy("never"), Never)
    assert parse_policy(500) == EveryN(500) and parse_policy("every:500") == EveryN(500) == parse_policy("500")
    sch = parse_policy("0-1000:500,1000-:1000")
    assert isinstance(sch, Schedule) and sch.ranges == [(0, 1000, 500), (1000, None, 1000)]
    st = parse_policy("recall<0.9@20")
    assert isinstance(st, StalenessTrigger) and st.min_recall == 0.9 and st.check_every == 20
    assert parse_policy("cosine<0.98").min_cosine == 0.98
    combo = parse_policy("1000|recall<0.8")
    assert isinstance(combo, AnyOf) and len(combo.policies) == 2
    for bad in ("sometimes", "0-1000:0", "1000-500:10", "x-:5", 3.5):
        with pytest.raises(ValueError, match="refresh"):
            parse_policy(bad)


def _fire_steps(policy, last_step):
    fake = SimpleNamespace(last_trigger_step=0)
    fired = []
    for step in range(last_step + 1):
        if policy.due(step, fake):
            fired.append(step)
            fake.last_trigger_step = step
    return fired


def test_every_and_schedule_fire_at_the_right_steps():
    assert _fire_steps(parse_policy("every:300"), 1000) == [300, 600, 900]
    assert _fire_steps(parse_policy("0-1000:500,1000-:1000"), 3500) == [500, 1000, 2000, 3000]
    assert _fire_steps(parse_policy("0-100:50"), 400) == [50], "no range covers later steps"


# ------------------------------------------------------------------------------------------ refresh

def test_background_refresh_while_loop_steps_then_equals_sync_build(dual, enc_dir, corpus):
    ids, texts = corpus
    gate = threading.Event()
    builds = []

    def factory(dim):
        builds.append(dim)
        if len(builds) > 1:  # hold the background build until the loop has stepped on
            assert gate.wait(60), "the loop never released the build"
        return ExactIndex(dim)

    refresher = AsyncRefresher(dual, corpus, policy="every:4", index_factory=factory, probe_size=64)
    assert refresher.version == 0 and len(refresher.index) == 150
    weights, steps_in_flight, swapped_at = {}, [], None
    for step in range(1, 30):
        weights[step] = copy.deepcopy(dual.doc_model.state_dict())
        if refresher.maybe_refresh(step):
            swapped_at = step
            break
        if refresher.in_flight:
            steps_in_flight.append(step)
        train_step(dual, texts)
        if len(steps_in_flight) == 3:
            gate.set()
    assert swapped_at is not None, "the refresh never swapped in"
    rec = refresher.records[0]
    assert rec.trigger_step == 4 and rec.swap_step == swapped_at and rec.mode == "async"
    assert steps_in_flight[:3] == [4, 5, 6], "the loop kept stepping while the refresh ran"
    assert refresher.version == refresher.index.version == 1
    assert rec.stall_s == pytest.approx(rec.snapshot_s + rec.wait_s + rec.swap_s)
    assert rec.encode_s > 0 and rec.ready_s >= rec.encode_s

    want, snap_dual = sync_build(enc_dir, weights[4], corpus, dual.dim)
    queries = snap_dual.encode_queries(texts[:20], progress=False)
    assert_same_results(refresher.index, want, queries)
    assert refresher.index.encoder_fingerprint == snap_dual.fingerprint("doc")
    now, _ = sync_build(enc_dir, dual.doc_model.state_dict(), corpus, dual.dim)
    assert not torch.allclose(now.embeddings, refresher.index.embeddings, atol=1e-4), \
        "the loop's later steps changed the weights: the swapped index must follow the snapshot"
    st = refresher.stats()
    assert st["refreshes"] == 1 and st["async_refreshes"] == 1 and len(st["stall_s"]) == 1
    refresher.close()


def test_refresh_now_is_the_synchronous_baseline(dual, enc_dir, corpus):
    refresher = AsyncRefresher(dual, corpus, policy="never", probe_size=32)
    train_step(dual, corpus[1])
    rec = refresher.refresh_now(step=3)
    assert rec.mode == "sync" and refresher.version == 1 and rec.trigger_step == 3
    assert rec.stall_s >= rec.encode_s + rec.build_s
    want, fresh = sync_build(enc_dir, dual.doc_model.state_dict(), corpus, dual.dim)
    assert_same_results(refresher.index, want, fresh.encode_queries(corpus[1][:10], progress=False))
    assert refresher.maybe_refresh(100) is False and refresher.version == 1, "policy 'never'"


def test_worker_failure_surfaces_in_the_training_thread(dual, corpus):
    calls = []

    def factory(dim):
        calls.append(dim)
        if len(calls) == 2:
            raise MemoryError("injected: cannot allocate the new index")
        return ExactIndex(dim)

    refresher = AsyncRefresher(dual, corpus, policy="every:2", index_factory=factory, probe_size=16)
    refresher.maybe_refresh(2)  # starts the failing refresh
    with pytest.raises(RefreshError, match="version 1 .*step 2.*MemoryError: injected") as info:
        for step in range(3, 200):
            refresher.maybe_refresh(step)
            refresher._job.join() if refresher._job is not None else None
    assert isinstance(info.value.__cause__, MemoryError)
    assert refresher.version == 0 and not refresher.in_flight
    refresher.refresh_now(blocking=False, step=10)  # the refresher keeps working after a failure
    assert refresher.wait(timeout=60) and refresher.version == 1


def test_process_worker_equals_sync_build_and_its_death_surfaces(dual, enc_dir, corpus):
    ids, texts = corpus
    with AsyncRefresher(dual, corpus, policy="every:1000", worker="process", probe_size=16) as refresher:
        train_step(dual, texts)
        snap = copy.deepcopy(dual.doc_model.state_dict())
        refresher.refresh_now(blocking=False, step=1)
        train_step(dual, texts)  # the loop goes on; the worker has its own snapshot
        assert refresher.wait(timeout=240)
        want, snap_dual = sync_build(enc_dir, snap, corpus, dual.dim)
        assert_same_results(refresher.index, want, snap_dual.encode_queries(texts[:10], progress=False))
        refresher._proc.kill()
        refresher._proc.join(10)
        refresher.refresh_now(blocking=False, step=2)
        with pytest.raises(RefreshError, match="worker process died"):
            refresher.wait(timeout=60)
        assert refresher.version == 1


def test_staleness_probe_and_trigger(dual, corpus):
    refresher = AsyncRefresher(dual, corpus, policy="recall<0.999@1", probe_size=64, probe_k=5)
    fresh = refresher.staleness()
    assert fresh["cosine"] == pytest.approx(1.0, abs=1e-5) and fresh["recall"] == 1.0 and fresh["n_probe"] == 64
    with torch.no_grad():
        for p in dual.doc_model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    stale = refresher.staleness()
    assert stale["cosine"] < 0.999 and stale["recall"] < 1.0
    refresher.maybe_refresh(1)  # measures, finds it stale, starts a refresh
    assert refresher.in_flight
    assert refresher.wait(timeout=60)
    rec = refresher.records[-1]
    assert rec.reason.startswith("recall@5") and rec.probe_cosine < 0.999
    after = refresher.staleness()
    assert after["cosine"] == pytest.approx(1.0, abs=1e-4) and after["recall"] == 1.0
    assert refresher.stats()["staleness_checks"] >= 4


def test_query_side_only_never_refreshes(dual, corpus):
    dual.freeze_doc_tower()
    refresher = AsyncRefresher(dual, corpus, policy="every:1", probe_size=16)
    for step in range(1, 6):
        assert refresher.maybe_refresh(step) is False
        train_step(dual, corpus[1])  # only the query tower moves
    assert refresher.version == 0 and refresher.stats()["refreshes"] == 0 and not refresher.enabled
    assert refresher.staleness()["cosine"] == pytest.approx(1.0, abs=1e-6)
