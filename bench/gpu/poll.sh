#!/usr/bin/env bash
# One poll of a session that bench/gpu/session.sh started: waits up to MAX_S seconds (default 240) for the
# session's SESSION_DONE, then prints the log's tail, the pipeline's last metrics and the GPU's load. The
# moment the session is done it packs the export into $OUT in this same call (bench/gpu/pack.sh export), so
# that the trained model is home even if the machine goes back before the next call: session 14 lost its
# whole session so, when the agent holding the calls stalled for 4 minutes between the last poll and the pack.
# Usage, from the repository root (run tool, no carry, timeout_s > MAX_S + 60): bash bench/gpu/poll.sh [MAX_S]
set -u
max=${1:-240}
log=/tmp/mg3/runs/session.log
for _ in $(seq $((max / 5))); do grep -q SESSION_DONE $log 2>/dev/null && break; sleep 5; done
tail -4 $log 2>/dev/null || echo "poll: no $log (a fresh machine: the session is gone)"
for m in $(ls -t /tmp/mg3/runs/embedded/*/metrics.jsonl 2>/dev/null | head -2); do  # the stages written last
  echo "$(basename "$(dirname "$m")"): $(tail -1 "$m" | cut -c 1-400)"
done
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
if grep -q SESSION_DONE $log 2>/dev/null; then
  echo "poll: the session is done: packing the export now"
  bash bench/gpu/pack.sh export
fi
