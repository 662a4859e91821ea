#!/usr/bin/env bash
# Make the export at home from what a poll brought home, when the machine went back after the session's last
# training stage had finished but before its export came back (session 23: the stage was done at step 4,060, the
# poll had packed that checkpoint, the machine went back in the gap before the next poll). The export stage runs on
# the CPU in seconds: the run is rebuilt from the carry the session started from (vae, decoder, latents' stats) with
# the polled stage in place under its own name and the session's pipeline.json, then `world_model.train all` runs
# the export stage alone.
#   bash bench/gpu/export_from_poll.sh PREV_TAR POLL_DIR RUN_DIR
#     PREV_TAR  the prev.tar the session started from (e.g. .carry/p22/prev.tar)
#     POLL_DIR  a folder holding the poll's slim_<stage>_<step>.tar.part-* files (the newest stage packed wins)
#     RUN_DIR   a new folder: the rebuilt run; its export lands in RUN_DIR/export
#     PYTHON    the interpreter with torch (default python3)
# The polled stage should be finished (its status "done"): a stage stopped mid-way exports too, with a warning,
# and is better continued (bench/gpu/carry_from_poll.sh).
set -euo pipefail
[ $# -eq 3 ] || { sed -n 2,14p "$0"; exit 2; }
prev=$(realpath "$1"); poll=$(realpath "$2"); run=$3
[ -e "$run" ] && { echo "export_from_poll: $run exists; give a new folder" >&2; exit 1; }
cd "$(dirname "$0")/../.."
# shellcheck source=bench/gpu/poll_run.sh
source bench/gpu/poll_run.sh
rebuild_run "$prev" "$poll" export_from_poll
[ -f "$work/pipeline.json" ] && cp "$work/pipeline.json" "$work/run/"
# the state of the stage when the poll slimmed it (a slim's own state is always done)
state=$("${PYTHON:-python3}" -c 'import json, sys; s = json.load(open(sys.argv[1])); print(s.get("stage_state", s.get("state", "?")))' \
  "$work/run/$stage/status.json" 2>/dev/null || echo "?")
[ "$state" = done ] || echo "export_from_poll: warning: $stage's state is '$state', not done" >&2
skip=$(echo data vae decoder encode base memory dmd sharpen | tr ' ' ',')
"${PYTHON:-python3}" -m world_model.train all --run "$work/run" --skip "$skip" --no-progress >"$work/log" 2>&1 ||
  { cat "$work/log" >&2; exit 1; }
mkdir -p "$(dirname "$run")" && mv "$work/run" "$run"
echo "export_from_poll: $run/export from $stage at $(cat "$run/$stage/checkpoints/latest")"
