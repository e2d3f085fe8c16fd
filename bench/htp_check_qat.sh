#!/usr/bin/env bash
# Do QAT'd models run on QNN HTP? Each `qonnx qat` output folder under WORK holds model.qdq.onnx,
# written with dynamic shapes; it is made a fixed-shape twin (`qonnx export --static-shape`, no
# re-quantization) and checked strictly in QNN's x86 HTP emulator (sm8650, no CPU fallback).
# Usage: bench/htp_check_qat.sh WORK [OUT] [STATIC_SHAPE]
#   bench/htp_check_qat.sh bench/results/lowbit-minilm-l6-qat-rte/work/rte bench/results/htp-check-qat-rte.md
set -euo pipefail
cd "$(dirname "$0")/.."
WORK="$1"
OUT="${2:-bench/results/htp-check-qat.md}"
SHAPE="${3:-1,128}"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP" "$OUT.tmp"' EXIT
{
  echo "# QAT models on QNN HTP (emulated sm8650, strict: CPU fallback disabled)"
  echo
  echo "\`bench/htp_check_qat.sh $*\`"
  for dir in "$WORK"/qat-*/; do
    name=$(basename "$dir")
    printf '\n## %s\n\n```\n' "$name"
    qonnx export "$dir/model.qdq.onnx" --static-shape "$SHAPE" -o "$TMP/$name.onnx" 2>&1 | grep "^wrote" | sed "s|$TMP/||"
    qonnx check "$TMP/$name.onnx" --ep qnn-htp --soc sm8650 2>&1 && echo "exit 0" || echo "exit $?"
    printf '```\n'
  done
} > "$OUT.tmp"
mv "$OUT.tmp" "$OUT"
echo "wrote $OUT"
