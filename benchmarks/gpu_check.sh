#!/usr/bin/env bash
# One prepared GPU check (< 8 minutes on one GPU): run it whenever a GPU is lent and record its
# final table, dated, as a CSV under data/measurements/ (the book's Measurements page shows it).
#   1. predictor training throughput at batch 256 (bf16 autocast, channels-last) and the loader /
#      model-step ratio, retrieval at SpaRED scale, slide-model memory (bench_predictors.py,
#      without its quality table);
#   2. SpaCKLE iterations per second at batch 256;
#   3. one predictor chapter (ShuffleNet) at the paper's budget on the embedded dataset.
# Usage: bash benchmarks/gpu_check.sh            (DEVICE=cpu QUICK=1 for a smoke test without a GPU)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
export SPARED_RESULTS_DIR="$OUT/results"
QUICK=${QUICK:-0}
$PY - <<PYEOF
import torch
print("device:", "$DEVICE", "|", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device")
if "$DEVICE" == "cuda" and not torch.cuda.is_available():
    raise SystemExit("no CUDA device: run with DEVICE=cpu QUICK=1 for a smoke test")
PYEOF

t0=$(date +%s)
if [ "$QUICK" = 1 ]; then BENCH=(--quick); SPACKLE_IT=5; CHAPTER=(-p iterations 2 -p batch_size 8 -p eval_every 1 -p val_spots 8 -p eval_spots 16 -p scenario completed); else BENCH=(--batch-size 256); SPACKLE_IT=200; CHAPTER=(-p budget paper -p scenario completed); fi
$PY benchmarks/bench_predictors.py --device "$DEVICE" --skip-quality "${BENCH[@]}" --json "$OUT/predictors.json" | tee "$OUT/predictors.txt"
t1=$(date +%s)
$PY - <<PYEOF | tee "$OUT/spackle.txt"
import json, time, torch
from spared_utils import completion, datasets
adata = datasets.load("synthetic", progress=False)
cfg = completion.SpackleConfig.make(iterations=$SPACKLE_IT, batch_size=256, device="$DEVICE", progress=False)
t = time.perf_counter()
completion.train_spackle(adata, config=cfg)
if torch.cuda.is_available():
    torch.cuda.synchronize()
rate = $SPACKLE_IT / (time.perf_counter() - t)
print(f"SpaCKLE: {rate:.1f} iterations/s at batch 256")
json.dump({"spackle_it_per_s": rate}, open("$OUT/spackle.json", "w"))
PYEOF
t2=$(date +%s)
$PY -m spared_utils.run 10_shufflenet --dataset synthetic -p device "$DEVICE" "${CHAPTER[@]}" -o "$OUT/10_shufflenet.ipynb"
t3=$(date +%s)
$PY - <<PYEOF
import json
p = json.load(open("$OUT/predictors.json")); s = json.load(open("$OUT/spackle.json"))
rows = [("device", p["device"])]
for r in p.get("throughput", []):
    rows.append((f"{r['model']} train samples/s (batch {r['batch']})", f"{r['train_samples_per_s']:.0f}"))
rows.append(("loader / fastest model step", f"{p['loader_over_fastest_step']:.1f}x"))
rows.append(("SpaCKLE iterations/s (batch 256)", f"{s['spackle_it_per_s']:.1f}"))
rows.append(("ShuffleNet chapter at the paper budget (s)", "$((t3 - t2))"))
rows.append(("bench_predictors (s)", "$((t1 - t0))"))
print("\n| measure | value |\n|---|---|")
for k, v in rows:
    print(f"| {k} | {v} |")
PYEOF
echo "outputs in $OUT"
