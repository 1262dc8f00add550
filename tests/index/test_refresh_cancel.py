"""Dropping an in-flight refresh: the end of training does not wait for an encode it would redo at once."""
import time

import pytest
import torch

from jmlr.index import AsyncRefresher
from jmlr.retriever.embedding import EncodeCancelled, encode_token_lists


@pytest.fixture(scope="module")
def enc_dir(tmp_path_factory):
    from jmlr.retriever.testing import tiny_encoder_dir

    return tiny_encoder_dir(tmp_path_factory.mktemp("enc"))


@pytest.fixture()
def dual(enc_dir):
    from jmlr.retriever import DualEncoder

    return DualEncoder.from_pretrained(enc_dir)


def _count_batches(refresher) -> list:
    """Count the snapshot tower's forward calls (one per encode batch), each slowed by 10 ms."""
    batches = []

    def hook(module, args, output):
        batches.append(1)
        time.sleep(0.01)  # returns None: the output is unchanged

    refresher._snap.doc_model.register_forward_hook(hook)
    return batches


def _until_encoding(refresher, batches) -> None:
    deadline = time.monotonic() + 120
    while len(batches) < 2:  # the background encode has started
        assert refresher._error is None, refresher._error[1]
        assert time.monotonic() < deadline, "the background encode never started"
        time.sleep(0.005)


def _corpus(n):
    from jmlr.retriever.testing import random_texts

    texts = random_texts(n, seed=5)
    return [f"p{i}" for i in range(n)], texts


def test_encode_stops_before_the_batch_where_should_stop_says_so(dual):
    toks = dual.tokenize(["a b c", "d e", "f", "g h i j"], "doc")
    asked = []

    def stop():
        asked.append(1)
        return len(asked) == 3  # batches 1 and 2 run, the third is not started

    dual.doc_model.train()
    with pytest.raises(EncodeCancelled, match="after 2 of 4"):
        encode_token_lists(dual.doc_model, toks, pad_id=0, pooling="mean", normalize=True, batch_size=1,
                           should_stop=stop)
    assert dual.doc_model.training, "the tower's train mode is restored after a cancelled encode"


def test_cancel_stops_the_thread_encode_and_keeps_the_served_index(dual):
    corpus = _corpus(150)
    refresher = AsyncRefresher(dual, corpus, policy="never", probe_size=16, batch_size=1)
    served = refresher.index
    batches = _count_batches(refresher)
    refresher.refresh_now(blocking=False, step=5)
    _until_encoding(refresher, batches)
    assert refresher.cancel() is True
    assert len(batches) < 150, "the encode stopped early instead of running to the end"
    assert refresher.version == 0 and refresher.index is served and not refresher.in_flight
    assert refresher.cancelled == 1 and refresher.cancel() is False  # nothing left to drop

    # the final rebuild of training: drops nothing now, then encodes the current tower in full
    rec = refresher.refresh_now(blocking=True, discard_in_flight=True)
    assert rec.mode == "sync" and refresher.version == 1 and rec.encoded == 150


def test_refresh_now_discard_in_flight_skips_the_wait(dual):
    corpus = _corpus(150)
    refresher = AsyncRefresher(dual, corpus, policy="never", probe_size=16, batch_size=1)
    batches = _count_batches(refresher)
    refresher.refresh_now(blocking=False, step=5)
    _until_encoding(refresher, batches)
    refresher.refresh_now(blocking=True, discard_in_flight=True)
    # the dropped background job stopped early; the sync rebuild then ran 150 batches of its own
    assert refresher.cancelled == 1 and refresher.version == 1
    assert len(batches) < 300
    with torch.no_grad():
        want = dual.encode_docs(corpus[1], progress=False)
    scores, ids = refresher.index.search(want[:3], 1)
    assert list(ids[:, 0]) == ["p0", "p1", "p2"]  # the rebuilt index holds the current tower's vectors


def test_cancel_stops_a_worker_process_and_the_next_refresh_starts_another(dual):
    corpus = _corpus(3000)  # 3000 one-text batches: the worker is mid-encode when cancel() comes
    with AsyncRefresher(dual, corpus, policy="never", probe_size=16, batch_size=1, worker="process") as refresher:
        refresher.refresh_now(blocking=False, step=1)
        assert refresher.cancel() is True
        assert refresher._proc is None and refresher.version == 0
        refresher.batch_size = 256
        refresher.refresh_now(blocking=False, step=2)  # a new worker process
        assert refresher.wait(timeout=240) and refresher.version == 1
