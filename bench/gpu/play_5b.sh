#!/usr/bin/env bash
# On the lent GPU machine: issue 17's GPU figures. One minute of scripted play against `mg3 play` with
# the 5B architecture at 704x1280 (random weights), driven by the browserless page
# (mg3_env.play.client.HeadlessPage; the machine has no Chromium): generated frames/s, key-to-frame
# latency, stalls, frames shown. Carry .carry/gym (gymnasium and websockets wheels).
# Usage, from the repository root (run tool: carry [".carry/gym"], timeout_s 600):
#   bash bench/gpu/play_5b.sh [--steps N] [--seconds S]
set -u -o pipefail
source bench/gpu/parts.sh
out=${OUT:-bench/results}
python3 bench/play.py --model mg3-5b-random --device cuda --client python --seconds 60 \
  --out "$out/play_5b_h200.json" "$@" 2>&1 | grep -v '^USDT:' | tee "$out/play_5b_h200.log"
