#!/usr/bin/env bash
# Rebuild a carry from what a poll brought home when the machine went back mid-session (bench/gpu/poll.sh packs
# the newest DiT checkpoint of a running stage as slim_<stage>_<step>.tar.part-NN): the stages of the carry the
# session started from (vae, decoder, latents) with that stage's weights as its base, so that a new start goes on
# from them (session 22 did this by hand on its second machine, within the same half-hour).
#   bash bench/gpu/carry_from_poll.sh PREV_TAR POLL_DIR OUT_DIR
#     PREV_TAR  the prev.tar the session started from (e.g. .carry/p1/prev.tar)
#     POLL_DIR  a folder holding the poll's slim_<stage>_<step>.tar.part-* files (the newest stage packed wins)
#     OUT_DIR   the new carry folder (OUT_DIR/prev.tar); run the session without GROW (the blocks are grown
#               already) and with --dit-layers of the carried model
#     PYTHON    the interpreter with torch (default python3)
set -euo pipefail
[ $# -eq 3 ] || { sed -n 2,10p "$0"; exit 2; }
prev=$(realpath "$1"); poll=$(realpath "$2"); out=$3
cd "$(dirname "$0")/../.."
# shellcheck source=bench/gpu/poll_run.sh
source bench/gpu/poll_run.sh
rebuild_run "$prev" "$poll" carry_from_poll
stages=vae,decoder,$stage
rename=""
[ "$stage" = base ] || rename="--as $stage=base"
# shellcheck disable=SC2086
"${PYTHON:-python3}" -m world_model.train.slim --run "$work/run" --out "$work/slim" --stages "$stages" $rename --dit-dtype bfloat16
[ -f "$work/run/latents/stats.json" ] && mkdir -p "$work/slim/latents" && cp "$work/run/latents/stats.json" "$work/slim/latents/"
mkdir -p "$out" && tar -cf "$out/prev.tar" -C "$work/slim" .
echo "carry_from_poll: $out/prev.tar ($(du -h "$out/prev.tar" | cut -f1)): vae, decoder and $stage as base at $(cat "$work/poll/$stage/checkpoints/latest")"
