"""Refresh under a compute budget: what gets re-encoded (pool, neighbours, random slice, within the budget),
rows left alone keep their old embeddings, full refreshes every ``full_every`` steps, and the swap stays
atomic (a search during a partial refresh sees the old or the new index, never a mix)."""
import threading
import time

import numpy as np
import pytest
import torch

from jmlr.index import AsyncRefresher
from jmlr.index.refresh import _budget_rows


@pytest.fixture(scope="module")
def enc_dir(tmp_path_factory):
    from jmlr.retriever.testing import tiny_encoder_dir

    return tiny_encoder_dir(tmp_path_factory.mktemp("enc"))


@pytest.fixture(scope="module")
def texts():
    from jmlr.retriever.testing import random_texts

    return random_texts(150, seed=11)


@pytest.fixture()
def dual(enc_dir):
    from jmlr.retriever import DualEncoder

    return DualEncoder.from_pretrained(enc_dir)


def train_step(dual, texts, lr=0.05):
    opt = torch.optim.SGD([p for p in dual.parameters() if p.requires_grad], lr=lr)
    loss = -(dual.embed_queries(texts[:6]) * dual.embed_docs(texts[6:12])).sum()
    opt.zero_grad()
    loss.backward()
    opt.step()


def spy_rows(refresher):
    """Record the positions each refresh encodes (None = all)."""
    seen = []
    real = refresher._encode_here

    def wrapped(rows=None):
        seen.append(None if rows is None else np.asarray(rows).copy())
        return real(rows)

    refresher._encode_here = wrapped
    return seen


def test_budget_rows_forms():
    assert _budget_rows(None, 100) is None and _budget_rows(0, 100) is None
    assert _budget_rows(0.1, 1000) == 100 and _budget_rows(0.001, 10) == 1 and _budget_rows(250, 1000) == 250
    for bad in (-1, 2.5, float("nan")):
        with pytest.raises(ValueError, match="budget"):
            _budget_rows(bad, 100)


def test_partial_refresh_encodes_pool_neighbours_and_random_slice_within_budget(dual, texts):
    ids = list(range(len(texts)))
    r = AsyncRefresher(dual, (ids, texts), policy="never", budget=30, neighbours=2, coverage=0.2, seed=3)
    old = r._served.clone()
    old_index = r.index
    # the loop reports its pools: 7 retrieved twice, 5 and 9 once; out-of-range and empty slots are ignored
    r.report_searched(np.array([[7, 5, -1], [7, 9, 10_000]]))
    expected_neigh = set()
    for p in (7, 5, 9):  # served-index neighbours of the pooled passages (2 each, not themselves)
        _, pos = old_index.search_positions(old[p:p + 1], 3)
        expected_neigh |= {int(x) for x in pos[0].tolist() if x != p}
    expected_neigh -= {5, 7, 9}
    train_step(dual, texts)
    seen = spy_rows(r)
    rec = r.refresh_now(blocking=True, step=10)
    rows = seen[-1]
    assert rec.scope == "partial" and rec.encoded == len(rows) == 30 == len(set(rows.tolist()))
    assert {5, 7, 9} <= set(rows.tolist())
    sel = rec.selected
    assert sel["pool"] == 3 and sel["neighbours"] == len(expected_neigh) and sel["pool_available"] == 3
    assert sel["pool"] + sel["neighbours"] + sel["random"] == 30 and sel["random"] >= int(np.ceil(0.2 * 30))
    chosen = set(rows.tolist())
    assert expected_neigh <= chosen

    # rows not re-encoded keep their old embeddings exactly; re-encoded rows match the new doc tower
    new = r.index.embeddings
    keep = np.setdiff1d(np.arange(len(texts)), rows)
    assert torch.equal(new[keep], old[keep])
    fresh = dual.encode_docs([texts[i] for i in rows], progress=False)
    torch.testing.assert_close(new[torch.from_numpy(rows)], fresh, atol=1e-5, rtol=0)
    assert not torch.allclose(new[torch.from_numpy(rows)], old[torch.from_numpy(rows)])
    assert torch.equal(old_index.embeddings, old), "the old index is never written to"
    assert r._hits.sum() == 0, "the pools start over after each refresh"
    st = r.stats()
    assert st["partial_refreshes"] == 1 and st["encoded_total"] == 30 and st["budget"] == 30


def test_pool_alone_can_fill_the_budget_less_the_coverage_slice(dual, texts):
    r = AsyncRefresher(dual, ([f"p{i}" for i in range(len(texts))], texts), policy="never", budget=0.1,
                       neighbours=3, coverage=0.5, seed=1)
    r.report_searched(np.array([[f"p{i}" for i in range(40)], ["nope"] * 40], dtype=object))  # str ids
    seen = spy_rows(r)
    rec = r.refresh_now(blocking=True, step=1)
    assert rec.encoded == 15 and rec.selected == {"pool": 7, "neighbours": 0, "random": 8, "pool_available": 40}
    assert set(range(7)) <= set(seen[-1].tolist())  # ties: the smaller position first (stable order)


def test_full_refresh_every_full_every_steps(dual, texts):
    r = AsyncRefresher(dual, (list(range(len(texts))), texts), policy="every:5", budget=0.1, full_every=15)
    seen = spy_rows(r)
    for step in range(1, 31):
        r.maybe_refresh(step)
        r.wait()
        if step % 3 == 0:
            train_step(dual, texts, lr=0.01)
    scopes = [(rec.trigger_step, rec.scope) for rec in r.records]
    assert scopes == [(5, "partial"), (10, "partial"), (15, "full"), (20, "partial"), (25, "partial"),
                      (30, "full")]
    assert [None if s is None else len(s) for s in seen] == [15, 15, None, 15, 15, None]
    r.close()


def test_no_budget_is_the_old_full_refresh(dual, texts):
    r = AsyncRefresher(dual, (list(range(len(texts))), texts), policy="never")
    r.report_searched(np.array([[1, 2]]))  # a no-op without a budget
    rec = r.refresh_now(blocking=True, step=1)
    assert rec.scope == "full" and rec.encoded == len(texts) and r._served is None


def test_swap_stays_atomic_during_a_partial_refresh(dual, texts):
    ids = list(range(len(texts)))
    r = AsyncRefresher(dual, (ids, texts), policy="every:1", budget=40, neighbours=2, seed=5)
    old_index = r.index
    old_store = old_index.embeddings.clone()
    r.report_searched(np.arange(20)[None])
    train_step(dual, texts, lr=0.2)
    real = r._encode_here

    def slow(rows=None):  # a long encode, so that searches run while the new index is being built
        time.sleep(0.3)
        return real(rows)

    r._encode_here = slow
    q = dual.encode_queries(texts[:8], progress=False)
    seen, stop = [], threading.Event()

    def searcher():
        while not stop.is_set():
            idx = r.index  # one read of the served reference, as a caller does
            s, i = idx.search(q, 5)
            seen.append((idx, s.clone(), np.array(i)))

    th = threading.Thread(target=searcher)
    th.start()
    try:
        r.maybe_refresh(1)  # trigger (background)
        assert r.in_flight
        while not r.maybe_refresh(2):  # swap when ready, in this (the training) thread
            time.sleep(0.01)
        time.sleep(0.1)
    finally:
        stop.set()
        th.join()
    new_index = r.index
    assert new_index is not old_index and r.records[-1].scope == "partial"
    want = {id(x): x.search(q, 5) for x in (old_index, new_index)}
    assert {id(x) for x, _, _ in seen} == {id(old_index), id(new_index)}, "searches ran before and after the swap"
    for idx, s, i in seen:
        ws, wi = want[id(idx)]
        assert (i == wi).all(), "a search saw a mix of the old and new index"
        torch.testing.assert_close(s, ws, atol=0, rtol=0)
    assert not (want[id(old_index)][1] == want[id(new_index)][1]).all(), "the refresh changed the results"
    assert torch.equal(old_index.embeddings, old_store)
    r.close()


def test_retrieval_state_reports_pools_and_reads_the_config(dual, texts):
    from jmlr.config import TrainConfig
    from jmlr.train.retrieval import RetrievalState, budget_kwargs

    cfg = TrainConfig()
    assert budget_kwargs(cfg.refresh)["budget"] is None
    cfg.refresh.every, cfg.refresh.budget, cfg.refresh.full_every = 10, 0.2, 100
    st = RetrievalState(dual, list(texts), cfg)
    st.build()
    assert st.refresher.budget == 30 and st.refresher.full_every == 100
    _, rows = st.search(dual.encode_queries(texts[:3], progress=False), 4)
    hits = st.refresher._hits
    assert hits.sum() == 12 and set(np.flatnonzero(hits)) == set(rows.reshape(-1).tolist())
    st.search(dual.encode_queries(texts[3:6], progress=False), 4, report=False)  # evaluation: not reported
    assert st.refresher._hits.sum() == 12
    st.close()
