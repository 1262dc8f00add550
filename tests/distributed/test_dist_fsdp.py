"""dist.strategy=fsdp on 2 torchrun gloo CPU ranks: the reader sharded with FSDP2 (full fine-tuning and LoRA)
takes the same optimizer step as the single-process run on the same questions, and the checkpoint's reader
folder (the full state gathered over the ranks, written by rank 0) reloads as a plain HF model with the same
outputs."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _ports import free_port

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "dist_fsdp_script.py"


@pytest.fixture(scope="module")
def fsdp_runs(tmp_path_factory, tiny_encoder_nodrop_dir, tiny_reader_dir):
    """Both modes single-process (one python run) and on 2 ranks (one torchrun launch): {mode: (single, dist)}."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun is not installed next to this Python")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    enc = tiny_encoder_nodrop_dir
    tmp = tmp_path_factory.mktemp("fsdp")
    r = subprocess.run([sys.executable, str(SCRIPT), enc, tiny_reader_dir, str(tmp / "s"), "2", "full,lora"],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    r = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", str(free_port()), str(SCRIPT), enc,
                        tiny_reader_dir, str(tmp / "d"), "1", "full,lora"], env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return {m: (tmp / "s" / m / "out.pt", tmp / "d" / m / "out.pt") for m in ("full", "lora")}


@pytest.mark.distributed
@pytest.mark.parametrize("mode", ["full", "lora"])
def test_fsdp_step_equals_single_process_and_saves_a_loadable_reader(fsdp_runs, tiny_reader_dir, mode):
    single, dist = fsdp_runs[mode]
    a, b = torch.load(single), torch.load(dist)
    assert a["world"] == 1 and not a["sharded"] and b["world"] == 2 and b["sharded"]
    assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
    assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
    assert set(b["reader"]) == set(a["reader"])
    for part in ("reader", "retriever"):
        for name, want in a[part].items():
            # AdamW's first step is lr * g / (|g| + eps): gradients near eps=1e-8 turn float summation-order
            # noise into errors up to ~1e-5 (lr=3e-3), hence atol=1e-5
            torch.testing.assert_close(b[part][name], want, rtol=1e-4, atol=1e-5, msg=f"{part}.{name}")
    if mode == "lora":  # 2 layers x (q_proj, v_proj) x (A, B) adapters, gathered beside the frozen base weights
        assert sum(1 for n in b["reader"] if "lora_" in n) == 8
    else:  # the step moved the reader (the comparison above is not between two untouched copies)
        from transformers import AutoModelForCausalLM

        before = AutoModelForCausalLM.from_pretrained(tiny_reader_dir).state_dict()
        moved = [n for n, v in before.items() if n in b["reader"] and not torch.allclose(b["reader"][n], v)]
        assert len(moved) > 10
    torch.testing.assert_close(b["logits"], a["logits"], rtol=1e-4, atol=1e-5)

    folder = Path(b["ckpt"]) / "reader"
    if mode == "full":
        from transformers import AutoModelForCausalLM

        plain = AutoModelForCausalLM.from_pretrained(folder)
    else:
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        assert (folder / "adapter_model.safetensors").is_file()
        plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_reader_dir), folder)
    with torch.no_grad():
        logits = plain.eval()(input_ids=b["ids"]).logits.float()
    torch.testing.assert_close(logits, b["logits"], rtol=1e-5, atol=1e-6)
