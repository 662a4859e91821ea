#!/usr/bin/env bash
# One poll of a session that bench/gpu/session.sh started: waits up to MAX_S seconds (default 540) for the
# session's SESSION_DONE, then prints the log's tail, the pipeline's last metrics and the GPU's load. The
# moment the session is done it packs the export into $OUT in this same call (bench/gpu/pack.sh export), so
# that the trained model is home even if the machine goes back before the next call: session 14 lost its
# whole session so, when the agent holding the calls stalled for 4 minutes between the last poll and the pack.
# Usage, from the repository root (run tool, no carry, timeout_s > MAX_S + 60): bash bench/gpu/poll.sh [MAX_S]
# (default 540: the fewer the gaps between calls, the fewer the chances to lose the machine in one).
# Exit 3 at once on a fresh machine (the session is gone).
set -u
max=${1:-540}
log=/tmp/mg3/runs/session.log
if [ ! -f $log ]; then  # at once: waiting would only spend the budget on an empty machine (session 16: 240 s)
  echo "poll: a fresh machine: no session here (the last one went back with the machine); stop polling"
  exit 3
fi
for _ in $(seq $((max / 5))); do grep -q SESSION_DONE $log 2>/dev/null && break; sleep 5; done
tail -4 $log
for m in $(ls -t /tmp/mg3/runs/embedded/*/metrics.jsonl 2>/dev/null | head -2); do  # the stages written last
  echo "$(basename "$(dirname "$m")"): $(tail -1 "$m" | cut -c 1-400)"
done
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
# every poll brings home the newest checkpoint this session wrote, unless an earlier poll did: session 15's
# machine was replaced mid-session and its 12 trained minutes were lost with it (a stage's checkpoint with
# its status and metrics: make_carry.sh / the export stage rebuild a model from it here)
ck=$(find /tmp/mg3/runs/embedded -path '*/checkpoints/step-*' -maxdepth 3 -type d -newer /tmp/mg3/runs/session_job.sh \
  -printf '%T@ %p\n' 2>/dev/null | sort -n | tail -1 | cut -d' ' -f2)
finished=0; grep -q SESSION_DONE $log 2>/dev/null && finished=1
if [ -n "$ck" ] && [ $finished = 0 ]; then  # once done, the export (~40 MB) replaces it: 64 MiB come back per call
  stage=$(basename "$(dirname "$(dirname "$ck")")"); step=$(basename "$ck")
  if [ ! -f "/tmp/packed_ck_${stage}_$step" ] && [ "$(du -sm "$ck" | cut -f1)" -gt 60 ]; then
    # a DiT stage's checkpoint (optimizer, error buffer: 353 MB in session 18) is over what a call brings back: its
    # weights alone, as a slim of that stage (world_model/train/slim.py; bf16 DiT), with the stage's metrics; named
    # by the step the slim holds (its latest: session 34's stage wrote step 380 between the find and the slim, and
    # the pack named step-344 held step 380)
    rm -rf /tmp/pollslim && PYTHONPATH=/tmp/site:/tmp/mg3 python3 -m world_model.train.slim --run /tmp/mg3/runs/embedded \
      --out /tmp/pollslim --stages "$stage" --dit-dtype bfloat16 > /dev/null \
      && cp /tmp/mg3/runs/embedded/"$stage"/metrics.jsonl /tmp/pollslim/"$stage"/ \
      && step=$(cat /tmp/pollslim/"$stage"/checkpoints/latest) \
      && tar -cf - -C /tmp/pollslim . | split -b 15M -d - "$OUT/slim_${stage}_$step.tar.part-" \
      && touch "/tmp/packed_ck_${stage}_$step" && echo "poll: packed $stage's weights at $step ($(du -sh /tmp/pollslim | cut -f1))"
  elif [ ! -f "/tmp/packed_ck_${stage}_$step" ]; then
    tar -cf - -C /tmp/mg3/runs/embedded "$stage/status.json" "$stage/metrics.jsonl" "$stage/checkpoints/$step" \
      | split -b 15M -d - "$OUT/ck_${stage}_$step.tar.part-" && touch "/tmp/packed_ck_${stage}_$step" \
      && echo "poll: packed $stage/checkpoints/$step ($(du -sh "$ck" | cut -f1))"
  fi
fi
# and every decoder snapshot written since the last poll (sharpen/snapshots, 1.3 MB each: a curve of candidates)
snaps=$(cd /tmp/mg3/runs/embedded 2>/dev/null && find . -path './*/snapshots/step-*.safetensors' 2>/dev/null | sort \
  | while read -r f; do [ -f "/tmp/packed_snap_$(echo "$f" | tr '/.' '__')" ] || echo "$f"; done)
if [ -n "$snaps" ]; then
  tar -cf - -C /tmp/mg3/runs/embedded $snaps | split -b 15M -d - "$OUT/snapshots_$(date +%H%M%S).tar.part-" \
    && for f in $snaps; do touch "/tmp/packed_snap_$(echo "$f" | tr '/.' '__')"; done \
    && echo "poll: packed $(echo $snaps | wc -w) decoder snapshots"
fi
if [ $finished = 1 ]; then
  echo "poll: the session is done: packing the export now"
  bash bench/gpu/pack.sh export
fi
