#!/usr/bin/env bash
# On the lent GPU machine: issue 14's whole env measurement in one command (one H200, about 5 minutes):
# bench/env_5b.py --ablation (eager reference with the camera cache off, + camera cache, cuDNN attention
# when auto runs another kernel, + compile, + fp8) at 704x1280 through MatrixGameEnv, with DiT / decode /
# host times, peak memory, warm and cold reset, accuracy against the reference and the FLOP floor.
# The JSON (rewritten after every configuration: a timeout still returns the finished ones) and the log go
# to $OUT (else bench/results/). Carry .carry/gym (its whl/ holds gymnasium, cloudpickle and
# farama-notifications; .carry/m1 has them too): without them the bench measures the streaming generator
# instead of the env, and says so.
# Usage, from the repository root:
#   bash bench/gpu/env_5b.sh                      the measurement (run tool: carry [".carry/gym"], timeout_s 600)
#   bash bench/gpu/env_5b.sh --config tiny        a quick check of the GPU paths on the tiny model
set -u -o pipefail
source bench/gpu/parts.sh
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/inductor}
out=${OUT:-bench/results}
python3 -c "import gymnasium" 2>/dev/null \
  || echo "WARNING: gymnasium is missing (carry .carry/gym): measuring the streaming generator, not MatrixGameEnv"
python3 bench/env_5b.py --ablation --chunks 3 --json "$out/env_5b_ablation_h200.json" "$@" 2>&1 \
  | grep -v '^USDT:' | tee "$out/env_5b_ablation_h200.log"
