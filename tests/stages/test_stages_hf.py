"""The stage recipes take a datasets.Dataset too: pretrain (a text column), sft, dpo, qgen."""
import json

import pytest

from jmlr.train.stages import DPOConfig, PretrainConfig, QGenConfig, SFTConfig, run_dpo, run_pretrain, run_qgen, run_sft
from jmlr.train.stages.dpo import preferences_from_hf
from jmlr.train.stages.sft import SFTExample, sft_examples_from_hf


def _fast(optim, steps=2):
    optim.precision, optim.warmup_steps, optim.steps, optim.batch_size = "fp32", 0, steps, 2


def test_pretrain_on_a_dataset_column(reader, corpus, tmp_path):
    import datasets

    ds = datasets.Dataset.from_dict({"body": corpus.texts() + ["  "]})
    cfg = PretrainConfig(output_dir=str(tmp_path / "cpt"))
    cfg.data.window = 24
    _fast(cfg.optim)
    s = run_pretrain(cfg, reader=reader, texts=ds, text_column="body", progress=False)
    assert s["steps"] == 2 and s["texts"] == len(corpus)  # the blank row is dropped
    with pytest.raises(ValueError, match="no column 'text'"):
        run_pretrain(cfg, reader=reader, texts=ds, progress=False)


def test_sft_on_a_dataset(reader, tmp_path):
    import datasets

    verbatim = datasets.Dataset.from_dict({"prompt": ["Q: dose of X?\nA:", "Q: dose of Y?\nA:"],
                                           "response": [" 10 mg.", " 5 mg."]})
    assert sft_examples_from_hf(verbatim, reader)[1] == SFTExample("Q: dose of Y?\nA:", " 5 mg.", "hf-1")
    inst = datasets.Dataset.from_dict({"instruction": ["Name a diuretic.", "Name a statin."],
                                       "output": ["Furosemide.", "Atorvastatin."]})
    ex = sft_examples_from_hf(inst, reader)
    assert ex[0].prompt.startswith("Instruction: Name a diuretic.") and ex[0].response == " Furosemide."
    cfg = SFTConfig(output_dir=str(tmp_path / "sft"))
    _fast(cfg.optim)
    assert run_sft(cfg, reader=reader, examples=inst, progress=False)["pairs"] == 2
    bad = datasets.Dataset.from_dict({"instruction": ["x", "y"], "output": ["ok", ""]})
    with pytest.raises(ValueError, match=r"record 1: column 'output' is ''"):
        sft_examples_from_hf(bad, reader)
    with pytest.raises(ValueError, match="expected columns prompt/response or instruction/output"):
        sft_examples_from_hf(datasets.Dataset.from_dict({"q": ["x"]}), reader)


def test_dpo_on_a_dataset(reader, tmp_path):
    import datasets

    ds = datasets.Dataset.from_dict({"prompt": ["Is X safe?", "Dose of Y?"], "chosen": ["No.", "10 mg."],
                                     "rejected": ["Always.", "A bottle."]})
    pairs = preferences_from_hf(ds)
    assert [p.id for p in pairs] == ["pair-0", "pair-1"] and pairs[0].chosen == "No."
    cfg = DPOConfig(output_dir=str(tmp_path / "dpo"))
    _fast(cfg.optim, steps=1)
    s = run_dpo(cfg, reader=reader, pairs=ds, progress=False)
    assert s["pairs"] == 2 and abs(s["first_loss"] - 0.6931) < 1e-3
    same = datasets.Dataset.from_dict({"prompt": ["p"], "chosen": ["a"], "rejected": [" a "]})
    with pytest.raises(ValueError, match="record 0: chosen and rejected are the same"):
        preferences_from_hf(same)


def test_qgen_on_a_dataset(reader, tmp_path):
    import datasets

    from jmlr.data import load_qa

    good = "Which drug is first-line?\nA. Velcoran\nB. Dry cough\nC. Hair loss\nD. Insomnia\nAnswer: A"
    text = ("Velcoran is the first-line drug for condition Q in adults; it is given orally once a day and "
            "its common side effect is ankle oedema.")
    ds = datasets.Dataset.from_dict({"doc_id": ["v1"], "text": [text]})
    seen = []

    def gen(prompts):
        seen.extend(prompts)
        return [good] * len(prompts)

    ds = ds.rename_column("doc_id", "id")
    s = run_qgen(QGenConfig(output_dir=str(tmp_path / "qg")), reader=reader, passages=ds, progress=False,
                 generate_fn=gen)
    assert s["passages"] == 1 and any("Velcoran is the first-line" in p for p in seen)
    assert json.loads((tmp_path / "qg" / "summary.json").read_text())["passages"] == 1
    if s["accepted"]:
        assert load_qa("jmlr", s["questions_file"])[0].gold_passage_ids == ["v1"]
