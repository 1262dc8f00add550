"""Big-reader loading knobs (issue 16): dtype, attention implementation, 4-bit/8-bit (QLoRA) and the full LoRA
config from YAML, on a tiny random Llama."""
import pytest
import torch

from jmlr.config import load_config
from jmlr.reader import Reader
from jmlr.reader import loading


def test_attn_implementation_and_dtype(tiny_reader_dir):
    r = Reader.from_pretrained(tiny_reader_dir, attn_implementation="eager", torch_dtype="bf16")
    assert r.model.config._attn_implementation == "eager"
    assert {p.dtype for p in r.model.parameters()} == {torch.bfloat16}
    r = Reader.from_pretrained(tiny_reader_dir, attn_implementation="sdpa", dtype="fp32", torch_dtype="float32")
    assert r.model.config._attn_implementation == "sdpa"
    with pytest.raises(ValueError, match="disagree"):
        Reader.from_pretrained(tiny_reader_dir, dtype="bf16", torch_dtype="fp32")


def test_quantization_without_bitsandbytes_is_a_clear_error(tiny_reader_dir, monkeypatch):
    import transformers

    monkeypatch.setattr(loading, "has_bitsandbytes", lambda: False)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        classmethod(lambda *a, **k: pytest.fail("the model loaded before the check")))
    for q in ("4bit", "8bit"):
        with pytest.raises(ImportError, match=rf"quantization={q} .*bitsandbytes, which is not installed: "
                                              r"pip install bitsandbytes"):
            Reader.from_pretrained(tiny_reader_dir, quantization=q, lora={"r": 4})
    cfg = load_config(None, ["reader.lora=true", "reader.quantization=4bit"])
    with pytest.raises(ValueError, match=r"reader.quantization=4bit .*not installed.*reader.quantization=none"):
        loading.reader_load_kwargs(cfg.reader)  # a ValueError too: the CLI prints it as one line


def test_quantization_setting_is_checked():
    with pytest.raises(ValueError, match=r"reader.quantization='3bit': expected one of none, 4bit, 8bit"):
        loading.reader_load_kwargs(load_config(None, ["reader.quantization=3bit"]).reader)
    assert loading.normalize_quantization("NF4") == "4bit" and loading.normalize_quantization(None) == "none"


def test_quantization_needs_lora(monkeypatch):
    monkeypatch.setattr(loading, "has_bitsandbytes", lambda: True)
    with pytest.raises(ValueError, match=r"reader.quantization=4bit: .*set reader.lora=true \(QLoRA\)"):
        loading.reader_load_kwargs(load_config(None, ["reader.quantization=4bit"]).reader)
    kw = loading.reader_load_kwargs(load_config(None, ["reader.quantization=8bit", "reader.lora=true"]).reader)
    assert kw["quantization"] == "8bit"


def test_full_lora_config_from_yaml(tiny_reader_dir, tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("reader:\n  lora: true\n  lora_r: 4\n  lora_alpha: 8\n  lora_dropout: 0.1\n"
                 "  lora_target_modules: [q_proj, v_proj]\n  lora_train_lm_head: true\n"
                 "  attn_implementation: eager\n")
    cfg = load_config(f)
    kw = loading.reader_load_kwargs(cfg.reader)
    kw["lora"].pop("ensure_weight_tying", None)  # set where peft has it (the tiny Llama ties its head)
    assert kw == {"lora": {"r": 4, "lora_alpha": 8, "lora_dropout": 0.1, "target_modules": ["q_proj", "v_proj"],
                           "modules_to_save": ["lm_head"]}, "attn_implementation": "eager"}
    kw = loading.reader_load_kwargs(cfg.reader)
    r = Reader.from_pretrained(tiny_reader_dir, **kw)
    pc = r.model.peft_config["default"]
    assert pc.r == 4 and pc.lora_alpha == 8 and pc.lora_dropout == 0.1
    assert set(pc.target_modules) == {"q_proj", "v_proj"}
    names = [n for n, p in r.model.named_parameters() if p.requires_grad]
    assert any("q_proj.lora_A" in n for n in names) and any("v_proj.lora_B" in n for n in names)
    assert not any("k_proj.lora" in n or "o_proj.lora" in n for n in names)
    head = r.model.get_base_model().lm_head  # peft's ModulesToSaveWrapper (tied to the input embeddings here)
    assert any(p.requires_grad for p in head.parameters()), "the LM head trains beside the adapters"
    # the command-line form of the same keys
    cli = load_config(None, ["reader.lora=true", "reader.lora_target_modules=q_proj,k_proj,v_proj,o_proj"])
    assert loading.reader_load_kwargs(cli.reader)["lora"]["target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj"]
    all_lin = load_config(None, ["reader.lora=true", "reader.lora_target_modules=all-linear"])
    assert loading.reader_load_kwargs(all_lin.reader)["lora"]["target_modules"] == "all-linear"
    assert loading.reader_load_kwargs(load_config(None, []).reader) == {"lora": None}  # defaults: unchanged


def test_joint_trainer_from_config_passes_reader_keys(tiny_reader_dir, tiny_bert_dir, tmp_path):
    from jmlr.train.trainer import JointTrainer

    cfg = load_config(None, [f"reader.model={tiny_reader_dir}", f"retriever.model={tiny_bert_dir}",
                             f"output_dir={tmp_path}", "reader.lora=true", "reader.lora_r=2",
                             "reader.lora_target_modules=q_proj", "reader.lora_dropout=0.05",
                             "reader.attn_implementation=eager", "reader.torch_dtype=fp32", "data.max_train=4"])
    t = JointTrainer.from_config(cfg, progress=False)
    pc = t.reader.model.peft_config["default"]
    assert pc.r == 2 and set(pc.target_modules) == {"q_proj"} and pc.lora_dropout == 0.05
    assert t.reader.model.config._attn_implementation == "eager"


def test_stage_recipe_reader_keys(tiny_reader_dir):
    from jmlr.train.stages.common import StageModelConfig, load_reader

    cfg = StageModelConfig(model=tiny_reader_dir, lora=True, lora_r=2, lora_target_modules=["v_proj"],
                           lora_train_lm_head=True, attn_implementation="eager", device="cpu")
    r = load_reader(cfg)
    pc = r.model.peft_config["default"]
    assert pc.r == 2 and set(pc.target_modules) == {"v_proj"}
    assert any(p.requires_grad for p in r.model.get_base_model().lm_head.parameters())
    with pytest.raises(ValueError, match=r"model.quantization=4bit"):
        load_reader(StageModelConfig(model=tiny_reader_dir, quantization="4bit", device="cpu"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (no GPU on this machine)")
@pytest.mark.skipif(not loading.has_bitsandbytes(), reason="needs bitsandbytes (not installed)")
def test_qlora_4bit_trains_on_cuda(tiny_reader_dir):
    from types import SimpleNamespace

    kw = loading.reader_load_kwargs(load_config(None, ["reader.lora=true", "reader.lora_r=4",
                                                       "reader.quantization=4bit", "reader.torch_dtype=bf16"]).reader)
    r = Reader.from_pretrained(tiny_reader_dir, device="cuda", max_length=128, **kw)
    assert any("4bit" in type(p).__name__.lower() for p in r.model.parameters()), "weights are 4-bit"
    ex = SimpleNamespace(question="Which organ makes insulin?", options={"A": "Liver", "B": "Pancreas"}, answer="B",
                         id="q", answer_text=None, gold_passage_ids=[])
    ll = r.answer_loglik([ex], [["The pancreas makes insulin.", "The liver stores iron."]])  # (1, 2)
    assert ll.shape == (1, 2) and torch.isfinite(ll).all()
    (-ll.sum()).backward()
    grads = [p.grad for n, p in r.model.named_parameters() if "lora_" in n and p.requires_grad]
    assert grads and all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
