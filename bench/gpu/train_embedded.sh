#!/usr/bin/env bash
# Start the embedded model's training pipeline detached on the lent H100 (see world_model/train/README.md).
# Usage: bash bench/gpu/train_embedded.sh BUDGET_MINUTES [extra pipeline flags]
set -u
source bench/gpu/setup.sh
mkdir -p runs
budget=${1:-20}; shift || true
setsid nohup python3 -m world_model.train all --run runs/embedded --budget-minutes "$budget" --no-progress "$@" \
  > runs/embedded.log 2>&1 < /dev/null &
echo "started pipeline pid $! (budget $budget min)"
