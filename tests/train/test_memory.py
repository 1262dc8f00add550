"""The memory planner of docs/distributed.md: hand-computed values, and parameter counts checked on real models."""
import pytest

from jmlr.train.memory import GIB, READERS, LlamaShape, memory_table, plan_memory


def test_hand_computed_values():
    # 7B full fine-tuning, bf16 weights + fp32 Adam states (master, m, v), DDP: 7e9 * (2 + 2 + 12) bytes
    p = plan_memory(7e9, "full", "ddp")
    assert p.total_bytes == 7e9 * (2 + 2 + 12)
    assert p.total_gib == pytest.approx(104.308, abs=1e-3)
    assert (p.weights_bytes, p.grads_bytes, p.optimizer_bytes) == (14e9, 14e9, 84e9)
    # FSDP over 8 GPUs shards all of it
    assert plan_memory(7e9, "full", "fsdp", world=8).total_gib == pytest.approx(7e9 * 16 / 8 / GIB)
    # fp32 weights need no master copy: 4 + 4 + 8
    assert plan_memory(7e9, "full", "ddp", dtype="fp32").total_bytes == 7e9 * 16
    # LoRA: frozen bf16 base (2 bytes) + 40M adapters at 16 bytes
    lora = plan_memory(7e9, "lora", "ddp", n_trainable=40e6)
    assert lora.total_bytes == 7e9 * 2 + 40e6 * 16
    assert lora.total_gib == pytest.approx(13.634, abs=1e-3)
    assert plan_memory(13e9, "lora", "fsdp", world=8, n_trainable=40e6).total_bytes == (13e9 * 2 + 40e6 * 16) / 8
    # QLoRA: nf4 base at 4.127 bits, adapters in bf16 with fp32 Adam
    q = plan_memory(13e9, "lora", "ddp", dtype="nf4", n_trainable=1e8)
    assert q.total_bytes == pytest.approx(13e9 * 4.127 / 8 + 1e8 * 16)


def test_bad_settings():
    with pytest.raises(ValueError, match="needs n_trainable"):
        plan_memory(7e9, "lora")
    with pytest.raises(ValueError, match="do not train in full"):
        plan_memory(7e9, "full", dtype="nf4")
    with pytest.raises(ValueError, match="strategy must be one of"):
        plan_memory(7e9, "full", "zero2")
    with pytest.raises(ValueError, match="world must be >= 1"):
        plan_memory(7e9, "full", "fsdp", world=0)


def test_shapes_give_the_published_parameter_counts():
    counts = {s.name.split()[0]: s.n_params for s in READERS}
    assert counts == {"135M": 134_515_008, "1B": 1_235_814_400, "7B": 6_738_415_616, "13B": 13_015_864_320}


def test_shape_counts_match_a_real_model_and_adapter(tiny_reader_dir):
    """The formulas count what torch and peft allocate (the tiny Llama of the tests)."""
    from jmlr.reader import Reader

    r = Reader.from_pretrained(tiny_reader_dir)
    c = r.model.config
    shape = LlamaShape("tiny", c.vocab_size, c.hidden_size, c.intermediate_size, c.num_hidden_layers,
                       c.num_key_value_heads * (c.hidden_size // c.num_attention_heads), c.tie_word_embeddings)
    assert shape.n_params == sum(p.numel() for p in r.model.parameters())
    r.add_lora({"r": 4, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                           "down_proj"]})
    assert shape.lora_params(4) == sum(p.numel() for p in r.model.parameters() if p.requires_grad)


def test_table_lists_every_reader():
    t = memory_table()
    assert t.count("\n") == 1 + len(READERS) and "full, FSDP x8" in t and "| 7B (Llama-2-7B) | 6.738B |" in t


def test_docs_table_is_the_computed_one():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "distributed.md").read_text()
    assert memory_table() in doc, "docs/distributed.md: paste the output of `python -m jmlr.train.memory`"
