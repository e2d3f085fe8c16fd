#!/usr/bin/env bash
# Accuracy of the device graph: each scheme's static 1x128 RTE model evaluated on the full
# RTE dev set in QNN's HTP emulator (x86, onnxruntime-qnn) beside the CPU provider, with the
# prediction agreement between the two. ~1.5 s per sequence: ~7 min per scheme on 2 cores.
# Usage: bench/htp_emulated.sh [GLUE_DIR] [SCHEMES]
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${1:-${QONNX_GLUE_DIR:-../shared/data/glue}}"
SCHEMES="${2:-w8a8,mp,peg,peg-equal}"
OUT=bench/results/htp-emulated-rte
WORK=$OUT/models   # git-ignored *.onnx
mkdir -p "$WORK"
qonnx models build minilm-l6-rte --data-dir "$DATA"
[ -f "$WORK/rte.static.onnx" ] || qonnx export minilm-l6-rte -o "$WORK/rte.static.onnx" --static-shape 1,128
[ -f "$OUT/ranges.json" ] || qonnx calibrate "$WORK/rte.static.onnx" --task rte --data-dir "$DATA" -o "$OUT/ranges.json"
for s in ${SCHEMES//,/ }; do
  [ -f "$OUT/$s.txt" ] && continue
  qonnx quantize "$WORK/rte.static.onnx" --scheme "$s" --ranges "$OUT/ranges.json" -o "$WORK/rte.static.$s.onnx"
  qonnx eval "$WORK/rte.static.$s.onnx" --task rte --data-dir "$DATA" --ep qnn-htp --soc sm8650 > "$OUT/$s.txt.tmp"
  mv "$OUT/$s.txt.tmp" "$OUT/$s.txt"
done
cat "$OUT"/*.txt
