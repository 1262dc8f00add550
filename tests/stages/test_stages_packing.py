"""Document-aware packing: positions restart per document, no attention across documents, and a token's
logits are the same packed and unpacked."""
import pytest
import torch

from jmlr.train.stages.batching import IGNORE_INDEX, sequence_logps
from jmlr.train.stages.pretrain import (PretrainConfig, _batches, document_attention, pack_documents, pack_windows,
                                        run_pretrain, PackedStream)


def test_pack_documents_positions_and_tokens():
    docs = [[1, 2, 3], [4, 5], [6, 7, 8, 9, 10, 11]]
    out = list(pack_documents(docs, window=4, sep_id=0))
    assert [w for w, _ in out] == list(pack_windows(docs, window=4, sep_id=0))  # the same tokens as stream packing
    assert [p for _, p in out] == [[0, 1, 2, 3], [0, 1, 2, 0], [0, 1, 2, 3], [0, 1]]
    assert list(pack_documents(docs, 4, 0, drop_last=True))[-1][1] == [0, 1, 2, 3]


def _docs(reader, texts):
    tok = reader.tokenizer
    return [tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in texts]


TEXTS = ["Aspirin lowers fever in adults.", "Insulin lowers the blood glucose of patients with diabetes.",
         "Heparin prevents clots."]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("mode", ["auto", "mask"])
def test_token_logits_equal_packed_and_unpacked(reader, attn, mode):
    model = reader.model.eval()
    model.set_attn_implementation(attn)
    docs = _docs(reader, TEXTS)
    ids = torch.tensor([sum(docs, [])])  # (1, L): the three documents in one window
    pos = torch.tensor([[p for d in docs for p in range(len(d))]])
    with torch.no_grad():
        packed = model(input_ids=ids, use_cache=False, **document_attention(model, pos, mode)).logits[0]  # (L, V)
        stream = model(input_ids=ids, use_cache=False).logits[0]
        start = 0
        for d in docs:
            alone = model(input_ids=torch.tensor([d]), use_cache=False).logits[0]  # (len, V)
            torch.testing.assert_close(packed[start:start + len(d)], alone, atol=1e-5, rtol=1e-5)
            if start:  # stream packing lets later documents attend to the earlier ones
                assert not torch.allclose(stream[start:start + len(d)], alone, atol=1e-4)
            start += len(d)
    # a batch of two windows, documents at other offsets (and one cut by the window boundary)
    flat = docs[2] + docs[0] + docs[1]
    half = len(flat) // 2
    windows = list(pack_documents([d[:-1] for d in (docs[2], docs[0], docs[1])], half, reader.tokenizer.eos_token_id))
    ids2 = torch.tensor([w for w, _ in windows[:2]])
    pos2 = torch.tensor([p for _, p in windows[:2]])
    with torch.no_grad():
        out = model(input_ids=ids2, use_cache=False, **document_attention(model, pos2, mode)).logits  # (2, half, V)
        for r in range(2):
            starts = (pos2[r] == 0).nonzero().flatten().tolist() + [half]
            for a, b in zip(starts[:-1], starts[1:]):
                alone = model(input_ids=ids2[r:r + 1, a:b], use_cache=False).logits[0]
                torch.testing.assert_close(out[r, a:b], alone, atol=1e-5, rtol=1e-5)


def test_packed_loss_is_the_sum_of_per_document_losses(reader):
    model = reader.model.eval()
    docs = _docs(reader, TEXTS)
    window = sum(len(d) for d in docs)
    (w, p), = list(pack_documents([d[:-1] for d in docs], window, reader.tokenizer.eos_token_id))
    ids, pos = torch.tensor([w]), torch.tensor([p])
    labels = ids.masked_fill(pos == 0, IGNORE_INDEX)
    kw = document_attention(model, pos)
    with torch.no_grad():
        got, n = sequence_logps(model, ids, kw["attention_mask"], labels, position_ids=kw["position_ids"])
        want = sum(float(sequence_logps(model, torch.tensor([d]), torch.ones(1, len(d), dtype=torch.long),
                                        torch.tensor([d]))[0]) for d in docs)
    assert int(n) == sum(len(d) - 1 for d in docs)
    assert abs(float(got) - want) < 1e-3


def test_batches_mask_document_starts(reader):
    tok = reader.tokenizer
    stream = PackedStream(TEXTS, tok, window=16, sep_id=tok.eos_token_id, shuffle=False)
    batches = _batches(stream, 2, "document")
    b = batches.collate(batches.batch(0)[0])
    ids, pos, lab = b.tensors["input_ids"], b.tensors["position_ids"], b.tensors["labels"]
    assert ids.shape == pos.shape == lab.shape == (2, 16)
    assert ((pos == 0) == (lab == IGNORE_INDEX)).all()
    after_eos = torch.zeros_like(ids, dtype=torch.bool)
    after_eos[:, 1:] = ids[:, :-1] == tok.eos_token_id
    assert (pos[after_eos] == 0).all()  # a new document starts after every separator
    assert b.n_units == int((lab[:, 1:] != IGNORE_INDEX).sum()) and b.n_tokens == 32


@pytest.mark.parametrize("packing", ["document", "stream"])
def test_run_pretrain_both_packings(reader, corpus, tmp_path, packing):
    cfg = PretrainConfig(output_dir=str(tmp_path / packing))
    cfg.data.window, cfg.data.packing = 32, packing
    cfg.optim.steps, cfg.optim.batch_size, cfg.optim.lr, cfg.optim.warmup_steps, cfg.optim.precision = 4, 2, 1e-2, 0, "fp32"
    s = run_pretrain(cfg, reader=reader, texts=corpus.texts(), progress=False)
    assert s["packing"] == packing and s["tokens"] == 4 * 2 * 32 and s["final_loss"] < s["first_loss"]
    if packing == "stream":
        assert s["loss_units"] == 4 * 2 * 31
    else:  # the first token of every document (and of every window) carries no loss
        assert s["loss_units"] < 4 * 2 * 31
    cfg.data.packing = "bogus"
    with pytest.raises(ValueError, match="data.packing must be one of"):
        run_pretrain(cfg, reader=reader, texts=corpus.texts(), progress=False)
