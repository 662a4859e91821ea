#!/usr/bin/env bash
# On the lent GPU machine: evaluate an exported model folder against the simulator (held-out test
# levels), one part per process so that every finished part is kept if the hold ends, then pack the
# export (weights) and the evaluation into runs/pack/ (files < 16 MiB, for $OUT).
# Usage: bash bench/gpu/eval_export.sh [MODEL_FOLDER] [OUT]   (defaults: runs/embedded/export runs/eval)
set -u
source bench/gpu/parts.sh
MODEL=${1:-runs/embedded/export}
EVAL=${2:-runs/eval}
mkdir -p runs/pack
tar -cf - "$MODEL" | split -b 15M - runs/pack/export.tar.  # the weights first: kept if the hold ends
for part in fidelity,distillation control memory stability; do
  python3 -m mg3_eval --model "$MODEL" --device cuda --batch-size 12 --parts "$part" \
    --out "$EVAL/${part%%,*}" > "$EVAL.${part%%,*}.log" 2>&1 || echo "part $part failed (rc $?)"
done
tar -czf runs/pack/eval.tgz "$EVAL" "$EVAL".*.log
ls -la runs/pack
