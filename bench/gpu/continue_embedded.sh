#!/usr/bin/env bash
# Continue the embedded model's training on a fresh GPU machine from a slim run folder
# (python -m world_model.train.slim --as memory=base) carried in .carry/slim and already copied to
# runs/embedded: regenerates the data (deterministic for the seed), re-encodes it, trains the memory
# stage from the carried weights for the rest of MEMORY_MINUTES, then DMD for DMD_MINUTES, then exports.
# With a third argument (eval), bench/gpu/eval_export.sh evaluates the export and packs it afterwards.
# Usage: bash bench/gpu/continue_embedded.sh MEMORY_MINUTES DMD_MINUTES [eval]
set -u
EVAL_AFTER=${3:-}
source bench/gpu/setup.sh
[ -f runs/embedded/pipeline.json ] || { echo "copy .carry/slim to runs/embedded first"; exit 1; }
setsid nohup bash -c "python3 -m world_model.train all --run runs/embedded --budget-minutes $1 --skip dmd,export --no-progress; \
  python3 -m world_model.train all --run runs/embedded --budget-minutes $2 --skip data,vae,decoder,encode,base,memory --no-progress; \
  if [ -n \"$EVAL_AFTER\" ]; then mkdir -p runs/eval; bash bench/gpu/eval_export.sh runs/embedded/export runs/eval; fi" \
  > runs/embedded.log 2>&1 < /dev/null &
echo "started (memory budget $1 min incl. data and encode, DMD $2 min)"
