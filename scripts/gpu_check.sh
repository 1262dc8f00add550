#!/usr/bin/env bash
# jmlr GPU check: on a machine with one NVIDIA GPU (README "GPU install"), in under 8 minutes:
#   1. gpu-tests   the gpu-marked tests (kernels, exact index and RetrievalState on CUDA, faiss-gpu, QLoRA)
#   2. topk        benchmarks/topk.py --device cuda --quick
#   3. joint       a 20-step joint run (`jmlr train`, bundled minilm + smollm2-135m, demo data) on CUDA in bf16,
#                  with the exact index on the GPU (checked from summary.json)
#   4. faiss-gpu   a faiss-gpu flat index on this GPU against exact search, when faiss-gpu is importable
# and writes ONE JSON report, OUT/gpu_check.json (default OUT: gpu_check/). Each step has its own time limit,
# and the limits add up to 8 minutes; a step that fails does not stop the others.
#
#   bash scripts/gpu_check.sh [--out DIR] [--dry-run]     (also: make gpu-check ARGS="--out DIR")
#
# --dry-run lists the steps and their commands and runs nothing (works on a CPU-only machine).
# PYTHON selects the interpreter (default: .venv/bin/python when present, else python).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="gpu_check"
DRY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT="${2:?--out needs a folder}"; shift 2 ;;
    --out=*) OUT="${1#--out=}"; shift ;;
    --dry-run) DRY=1; shift ;;
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument '$1' (expected --out DIR, --dry-run, --help)" >&2; exit 2 ;;
  esac
done
cd "$ROOT" || exit 2
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python; fi
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

PRECISION="optim.precision=bf16"  # explicit: the check is about the bf16 CUDA path

# name | time limit (s) | command   (limits: 200 + 120 + 120 + 40 = 480 s = 8 min)
STEPS=(
  "gpu-tests|200|$PYTHON -m pytest -q -m gpu -p no:cacheprovider -rs --junitxml=$OUT/gpu_tests.xml tests"
  "topk|120|$PYTHON benchmarks/topk.py --device cuda --quick --out $OUT/topk"
  "joint|120|$PYTHON -m jmlr.cli train --no-progress output_dir=$OUT/joint optim.steps=20 $PRECISION index.type=exact refresh.every=10 eval_every=0 data.max_train=200 data.max_eval=20 checkpoint_every=0"
  "faiss-gpu|40|$PYTHON $ROOT/scripts/gpu_check_faiss.py $OUT/faiss_gpu.json"
)

if [ "$DRY" = 1 ]; then
  echo "gpu_check dry run: would write $OUT/gpu_check.json after these steps (limit in seconds):"
  for s in "${STEPS[@]}"; do
    IFS='|' read -r name limit cmd <<<"$s"
    printf '  %-10s %4ss  %s\n' "$name" "$limit" "$cmd"
  done
  echo "faiss-gpu runs only when 'import faiss' sees a GPU; the joint run must report index_device cuda:N."
  exit 0
fi

if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "gpu_check.sh: no CUDA GPU visible to $PYTHON (torch.cuda.is_available() is False); install the README's" \
       "GPU lines on a GPU machine, or use --dry-run to list the steps" >&2
  exit 2
fi

mkdir -p "$OUT/logs"
: >"$OUT/steps.tsv"
T0=$(date +%s)
for s in "${STEPS[@]}"; do
  IFS='|' read -r name limit cmd <<<"$s"
  if [ "$name" = "faiss-gpu" ] && ! "$PYTHON" -c "import faiss, sys; sys.exit(0 if faiss.get_num_gpus() > 0 else 1)" 2>/dev/null; then
    printf '%s\t%s\t%s\t%s\n' "$name" "skipped" 0 "$cmd" >>"$OUT/steps.tsv"
    echo "== $name: skipped (faiss-gpu not importable or sees no GPU)"
    continue
  fi
  echo "== $name (limit ${limit}s): $cmd"
  t=$(date +%s)
  timeout --kill-after=10 "$limit" bash -c "$cmd" >"$OUT/logs/$name.log" 2>&1
  rc=$?
  dt=$(( $(date +%s) - t ))
  tail -n 3 "$OUT/logs/$name.log"
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$dt" "$cmd" >>"$OUT/steps.tsv"
  echo "   rc=$rc in ${dt}s"
done
TOTAL=$(( $(date +%s) - T0 ))

"$PYTHON" "$ROOT/scripts/gpu_check_report.py" "$OUT" "$TOTAL"
