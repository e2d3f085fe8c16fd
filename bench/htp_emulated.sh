#!/usr/bin/env bash
# Accuracy of the device graph: each scheme's static model of a fine-tuned checkpoint evaluated on
# the full dev set in QNN's HTP emulator (x86, onnxruntime-qnn) beside the CPU provider, with the
# prediction agreement between the two. 0.5-1 s per sequence at 1x128 on 2 cores.
# Usage: bench/htp_emulated.sh [GLUE_DIR] [SCHEMES] [TASK] [STATIC_SHAPE]
#   bench/htp_emulated.sh                                      # RTE at 1x128 -> bench/results/htp-emulated-rte
#   bench/htp_emulated.sh ../shared/data/glue w8a8,mp,peg sst2 1,64   # -> bench/results/htp-emulated-sst2
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${1:-${QONNX_GLUE_DIR:-../shared/data/glue}}"
SCHEMES="${2:-w8a8,mp,peg,peg-equal}"
TASK="${3:-rte}"
SHAPE="${4:-1,128}"
OUT=bench/results/htp-emulated-$TASK
WORK=$OUT/models   # git-ignored *.onnx
mkdir -p "$WORK"
qonnx models build "minilm-l6-$TASK" --data-dir "$DATA"
[ -f "$WORK/$TASK.static.onnx" ] || qonnx export "minilm-l6-$TASK" -o "$WORK/$TASK.static.onnx" --static-shape "$SHAPE"
[ -f "$OUT/ranges.json" ] || qonnx calibrate "$WORK/$TASK.static.onnx" --task "$TASK" --data-dir "$DATA" -o "$OUT/ranges.json"
for s in ${SCHEMES//,/ }; do
  [ -f "$OUT/$s.txt" ] && continue
  qonnx quantize "$WORK/$TASK.static.onnx" --scheme "$s" --ranges "$OUT/ranges.json" -o "$WORK/$TASK.static.$s.onnx"
  qonnx eval "$WORK/$TASK.static.$s.onnx" --task "$TASK" --data-dir "$DATA" --ep qnn-htp --soc sm8650 > "$OUT/$s.txt.tmp"
  mv "$OUT/$s.txt.tmp" "$OUT/$s.txt"
done
cat "$OUT"/*.txt
