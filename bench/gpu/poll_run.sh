# Sourced by carry_from_poll.sh and export_from_poll.sh: rebuild_run PREV_TAR POLL_DIR NAME rebuilds, in a new
# temporary folder $work (removed on exit), the run a lost session started from ($work/run: PREV_TAR's stages)
# with the stage a poll packed put in place under its own name ($stage; the newest slim_<stage>_<step>.tar.part-*
# of POLL_DIR wins) and the session's pipeline.json when the slim holds one (kept aside as $work/pipeline.json).
# NAME prefixes the error messages.
rebuild_run() {
  local prev=$1 poll=$2 name=$3 first prefix
  first=$(ls -t "$poll"/slim_*_step-*.tar.part-00 2>/dev/null | head -1 || true)
  [ -n "$first" ] || { echo "$name: no slim_<stage>_<step>.tar.part-00 in $poll" >&2; return 1; }
  prefix=${first%.part-00}
  stage=$(basename "$prefix" | sed -E 's/^slim_(.*)_step-[0-9]+\.tar$/\1/')
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  mkdir -p "$work/run" "$work/poll"
  tar -xf "$prev" -C "$work/run"
  cat "$prefix".part-* | tar -xf - -C "$work/poll"
  [ -d "$work/poll/$stage/checkpoints" ] || { echo "$name: the poll's slim holds no $stage checkpoint" >&2; return 1; }
  rm -rf "${work:?}/run/$stage" && cp -r "$work/poll/$stage" "$work/run/$stage"
  if [ -f "$work/poll/pipeline.json" ]; then cp "$work/poll/pipeline.json" "$work/pipeline.json"; fi
}
