"""DualEncoder: sentence-transformers compatibility, towers, gradients, persistence, fingerprints, errors."""
import json

import pytest
import torch

from jmlr.retriever import DualEncoder


def test_matches_sentence_transformers_mean_normalized(st_encoder_dir, texts):
    from sentence_transformers import SentenceTransformer

    dual = DualEncoder.from_pretrained(st_encoder_dir)
    assert (dual.pooling, dual.normalize, dual.max_length) == ("mean", True, 64)
    ours = dual.encode_docs(texts, batch_size=7, progress=False)
    ref = SentenceTransformer(str(st_encoder_dir), device="cpu").encode(texts, convert_to_tensor=True)
    assert ours.shape == (len(texts), 32) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, ref.cpu(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.norm(dim=1), torch.ones(len(texts)), atol=1e-5, rtol=0)


def test_matches_sentence_transformers_cls_unnormalized(cls_encoder_dir, texts):
    from sentence_transformers import SentenceTransformer

    dual = DualEncoder.from_pretrained(cls_encoder_dir)
    assert (dual.pooling, dual.normalize) == ("cls", False)
    ours = dual.encode_queries(texts, progress=False)
    ref = SentenceTransformer(str(cls_encoder_dir), device="cpu").encode(texts, convert_to_tensor=True)
    torch.testing.assert_close(ours, ref.cpu(), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(ours.norm(dim=1), torch.ones(len(texts)), atol=1e-3)


def test_encode_is_order_preserving_and_batch_independent(dual, texts):
    a = dual.encode_docs(texts, batch_size=1, progress=False)
    b = dual.encode_docs(texts, batch_size=16, progress=False)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    rev = dual.encode_docs(texts[::-1], batch_size=16, progress=False)
    torch.testing.assert_close(rev.flip(0), b, atol=1e-5, rtol=1e-5)
    assert dual.encode_docs([], progress=False).shape == (0, dual.dim)


def test_embed_has_grad_and_equals_encode(dual, texts):
    dual.train()
    q = dual.embed_queries(texts[:4])
    d = dual.embed_docs(texts[4:10])
    assert q.shape == (4, 32) and d.shape == (6, 32) and q.requires_grad and d.requires_grad
    torch.testing.assert_close(d.detach(), dual.encode_docs(texts[4:10], progress=False), atol=1e-5, rtol=1e-5)
    assert dual.training, "encode_* must restore training mode"
    (q @ d.T).sum().backward()
    grads = [p.grad for p in dual.doc_model.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    assert dual(texts[:2], texts[2:5]).shape == (2, 3)


def test_separate_towers_are_independent(st_encoder_dir, texts):
    dual = DualEncoder.from_pretrained(st_encoder_dir, shared=False)
    assert not dual.shared and dual.query_model is not dual.doc_model
    before = dual.encode_docs(texts[:5], progress=False)
    with torch.no_grad():
        for p in dual.query_model.parameters():
            p.add_(0.1)
    torch.testing.assert_close(dual.encode_docs(texts[:5], progress=False), before)
    assert not torch.allclose(dual.encode_queries(texts[:5], progress=False), before, atol=1e-4)


def test_freeze_doc_tower_unties_and_stops_grad(dual, texts):
    assert dual.shared and not dual.doc_frozen
    dual.freeze_doc_tower()
    assert not dual.shared and dual.doc_frozen
    assert all(p.requires_grad for p in dual.query_model.parameters())
    assert not dual.embed_docs(texts[:2]).requires_grad
    assert dual.embed_queries(texts[:2]).requires_grad


@pytest.mark.parametrize("shared", [True, False])
def test_save_load_round_trip_safetensors(st_encoder_dir, tmp_path, texts, shared):
    dual = DualEncoder.from_pretrained(st_encoder_dir, shared=shared)
    with torch.no_grad():  # make the towers differ from the source folder
        for p in dual.doc_model.parameters():
            p.mul_(1.01)
    out = dual.save_pretrained(tmp_path / "ret")
    files = {p.name for p in out.rglob("*")}
    assert "model.safetensors" in files and not any(f.endswith(".bin") for f in files)
    cfg = json.loads((out / "jmlr_retriever.json").read_text())
    assert cfg["shared"] is shared
    back = DualEncoder.from_pretrained(out)
    assert back.shared is shared
    torch.testing.assert_close(back.encode_docs(texts, progress=False), dual.encode_docs(texts, progress=False))
    torch.testing.assert_close(back.encode_queries(texts, progress=False), dual.encode_queries(texts, progress=False))
    assert back.fingerprint("doc") == dual.fingerprint("doc")


def test_saved_shared_folder_loads_in_sentence_transformers(dual, tmp_path, texts):
    from sentence_transformers import SentenceTransformer

    dual.save_pretrained(tmp_path / "ret")
    ref = SentenceTransformer(str(tmp_path / "ret"), device="cpu").encode(texts, convert_to_tensor=True)
    torch.testing.assert_close(dual.encode_docs(texts, progress=False), ref.cpu(), atol=1e-5, rtol=1e-5)


def test_plain_hf_folder_with_overrides(tmp_path, texts):
    from jmlr.retriever.testing import tiny_encoder_dir

    path = tiny_encoder_dir(tmp_path / "hf", sentence_transformers=False)
    dual = DualEncoder.from_pretrained(path, pooling="cls", normalize=False, max_length=16)
    assert (dual.pooling, dual.normalize, dual.max_length) == ("cls", False, 16)
    assert max(len(t) for t in dual.tokenize(texts)) <= 16


def test_fingerprint_tracks_doc_weights_only(st_encoder_dir):
    a = DualEncoder.from_pretrained(st_encoder_dir, shared=False)
    b = DualEncoder.from_pretrained(st_encoder_dir, shared=False)
    assert a.fingerprint("doc") == b.fingerprint("doc"), "two loads of one folder must agree"
    with torch.no_grad():
        next(b.query_model.parameters()).add_(1.0)
    assert a.fingerprint("doc") == b.fingerprint("doc")
    with torch.no_grad():
        next(b.doc_model.parameters()).add_(1.0)
    assert a.fingerprint("doc") != b.fingerprint("doc")


def test_bad_inputs(st_encoder_dir, tmp_path, dual):
    with pytest.raises(ValueError, match="pooling"):
        DualEncoder.from_pretrained(st_encoder_dir, pooling="median")
    with pytest.raises(ValueError, match="one string"):
        dual.encode_docs("a single string", progress=False)
    with pytest.raises(ValueError, match="text 1"):
        dual.embed_queries(["ok", 3])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        DualEncoder.from_pretrained(tmp_path / "empty")
    bad = tmp_path / "bad-st"
    bad.mkdir()
    (bad / "modules.json").write_text("{not json")
    with pytest.raises(ValueError, match="modules.json"):
        DualEncoder.from_pretrained(bad)
    with pytest.raises(ValueError, match="batch_size"):
        dual.encode_docs(["a"], batch_size=0)
