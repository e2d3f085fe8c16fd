#!/usr/bin/env bash
# Zero-shot STS-B (dev) of the packaged all-MiniLM-L6-v2 as a sentence-embedding model:
# FP32 and each scheme, cosine Spearman of mean-pooled embeddings (MTEB's STS score).
# Usage: bench/run_sts_embedding.sh GLUE_DIR OUT_DIR   (calibration: the 64 shipped sentences)
set -euo pipefail
GLUE="$1"; OUT="$2"
mkdir -p "$OUT"
qonnx export minilm-l6 --task feature-extraction -o "$OUT/model.onnx"
qonnx calibrate "$OUT/model.onnx" -o "$OUT/ranges.json"
qonnx quantize "$OUT/model.onnx" --scheme w8a8 --ranges "$OUT/ranges.json" -o "$OUT/model.w8a8.onnx"
qonnx quantize "$OUT/model.onnx" --scheme mp --ranges "$OUT/ranges.json" -o "$OUT/model.mp.onnx"
qonnx quantize "$OUT/model.onnx" --scheme peg --ranges "$OUT/ranges.json" -o "$OUT/model.peg.onnx"
qonnx quantize "$OUT/model.onnx" --scheme peg --target cpu --ranges "$OUT/ranges.json" -o "$OUT/model.peg-cpu.onnx"
{
  echo "# Zero-shot STS-B dev, all-MiniLM-L6-v2 as a sentence-embedding model"
  echo
  echo "Command: \`bench/run_sts_embedding.sh GLUE_DIR OUT\` ($(python -c 'import qonnx_bert; print("qonnx-bert", qonnx_bert.__version__)'))."
  echo "Calibration: the 64 shipped sentences, current min-max, padding excluded. Metric: Spearman (and Pearson)"
  echo "of the cosine similarity of the two sentences' mean-pooled, L2-normalised embeddings vs the gold scores, x100."
  echo
  for m in model model.w8a8 model.mp model.peg model.peg-cpu; do
    echo "- \`$m.onnx\`: $(qonnx eval "$OUT/$m.onnx" --task stsb --data-dir "$GLUE" 2>/dev/null | tail -1)"
  done
} > "$OUT/results.md"
cat "$OUT/results.md"
