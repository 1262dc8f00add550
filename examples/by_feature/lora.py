"""Feature: train the reader through LoRA adapters (peft) while the retriever trains fully.

    python examples/by_feature/lora.py --quick
    python examples/by_feature/lora.py reader.lora_r=16 reader.lr=2e-4
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from train_medqa import build_parser, run  # noqa: E402

if __name__ == "__main__":
    out = run(build_parser(__doc__).parse_args(), ["reader.lora=true", "reader.lr=2e-4"])
    trainable = [n for n, p in out["trainer"].reader.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable), "only LoRA adapters should train"
    print(f"LoRA: {len(trainable)} trainable adapter tensors")
