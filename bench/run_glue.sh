#!/usr/bin/env bash
# The GLUE table in the README: MiniLM-L6 checkpoints fine-tuned by the models/ recipes,
# every scheme, median over calibration seeds. Resumable: re-running skips finished cells.
# Usage: bench/run_glue.sh [GLUE_DIR] [TASKS] [OUT]
# OUT (default bench/results) must be new for checkpoints built on another machine: fine-tuning
# is not bit-reproducible, and qonnx bench refuses cells and ranges cached for another build.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${1:-${QONNX_GLUE_DIR:-../shared/data/glue}}"
TASKS="${2:-rte,mrpc,cola,sst2,stsb}"
OUT="${3:-bench/results}"
for t in ${TASKS//,/ }; do
  qonnx models build "minilm-l6-$t" --data-dir "$DATA"   # no-op when already built
done
qonnx bench glue --model minilm-l6 --tasks "$TASKS" --data-dir "$DATA" --seeds 3 \
  --schemes fp32,w8a32,w32a8,w8a8,mp,peg-k6-noperm,peg-k6,peg-k3-noperm,peg-k3,peg-outlier-k6,peg-outlier-k3,peg-outlier-k6-folded,peg-outlier-k3-folded,peg-outlier-k2-folded,peg-outlier-k6-folded-cpu,peg-outlier-k2-folded-cpu,peg-outlier-k6-folded-gelu,peg-outlier-k2-folded-gelu,peg-outlier-k6-folded-gelu-cpu,peg-outlier-k2-folded-gelu-cpu \
  -o "$OUT/glue-minilm-l6"
# auto-mp's sensitivity scan takes minutes per cell on 2 cores: one calibration seed, RTE and MRPC.
qonnx bench glue --model minilm-l6 --tasks rte,mrpc --data-dir "$DATA" --seeds 1 --latency-runs 0 \
  --schemes fp32,w8a8,mp,auto-mp -o "$OUT/glue-minilm-l6-auto-mp"
# Where the RTE model's outliers are (the paper's Figure 2 and the top dimensions per layer).
qonnx outliers "$OUT/glue-minilm-l6/rte/models/fp32.onnx" --task rte --data-dir "$DATA" \
  -o "$OUT/glue-minilm-l6/outliers-rte.png"
# The paper's Table 2: W32A8 with one role family left in float, one seed.
qonnx bench glue --model minilm-l6 --tasks "$TASKS" --data-dir "$DATA" --seeds 1 --latency-runs 0 \
  --schemes loo -o "$OUT/glue-minilm-l6-loo"
