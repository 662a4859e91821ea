#!/usr/bin/env bash
# Pack a session's results into $OUT (at most 8 files of 16 MiB, 64 MiB together, come back per call).
#   bash bench/gpu/pack.sh export   the exported model (runs/embedded/export) + logs, bench, metrics
#   bash bench/gpu/pack.sh memory   the memory model a DMD session distilled (runs/embedded/export_memory):
#                                   a call of its own, as the two exports (~40 MB each) are over the 64 MiB
#                                   that one call brings back (session 11 lost a part of it so)
#   bash bench/gpu/pack.sh slim     the weights a later session continues from (runs/slim)
#   bash bench/gpu/pack.sh student  the DMD student a later session's DMD stage goes on from (runs/slim_student)
#   bash bench/gpu/pack.sh compile  the compile caches (TORCHINDUCTOR_CACHE_DIR=/tmp/inductor, less triton/), which a
#                                   later session's session.sh unpacks before the DiT stages: their
#                                   blocks then load compiled kernels instead of compiling them again
#   bash bench/gpu/pack.sh export compile   several in one call, in that order, when they fit in what one call
#                                   brings back (export ~40 MB + compile ~21 MB; export + slim, ~86 MB, do not)
# Files: <what>.tar.part-NN (split at 15 MiB; cat them and untar), logs.tar.
set -u
cd /tmp/mg3/runs || exit 1
[ $# -gt 0 ] || set -- export
# a session still running (its log has no SESSION_DONE yet): wait for it, within the call's limit
wait_s=$([ "$*" = compile ] && echo 45 || echo 105)
for _ in $(seq $((wait_s / 5))); do grep -q SESSION_DONE session.log 2>/dev/null && break; sleep 5; done
grep -q SESSION_DONE session.log 2>/dev/null || echo "pack: the session is still running (waited ${wait_s} s); packing what there is" >&2
status=0
for what in "$@"; do
  # the export comes first: a slim asked for before the export was packed packs the export instead
  if [ "$what" = slim ] && [ ! -f /tmp/packed_export ] && [ -d embedded/export ] && [[ " $* " != *" export "* ]]; then
    echo "pack: the export was not packed yet: packing the export instead of the slim" >&2
    what=export
  fi
  case $what in
    slim) src=slim ;; student) src=slim_student ;; memory) src=embedded/export_memory ;; export) src=embedded/export ;;
    compile)
      du -sh /tmp/inductor/* 2>/dev/null | sort -h | tail -6
      # not triton/: each FX graph cache entry bundles its kernels' binaries and writes them back on a hit
      # (the triton folder adds every kernel's intermediate forms: most of session 7's 830 MB)
      tar -czf /tmp/compile.tar.gz -C /tmp --exclude=inductor/triton inductor \
        && split -b 15M -d /tmp/compile.tar.gz "$OUT/compile.tar.gz.part-" || status=1
      continue ;;
    *) echo "pack: unknown part $what (export, memory, slim, student, compile)" >&2; status=2; continue ;;
  esac
  if [ -f /tmp/packed_$what ] && ls "$OUT/$what.tar.part-"* >/dev/null 2>&1; then continue; fi
  if [ -d "$src" ]; then
    tar -cf /tmp/$what.tar -C "$(dirname $src)" "$(basename $src)" && split -b 15M -d /tmp/$what.tar "$OUT/$what.tar.part-" \
      && touch /tmp/packed_$what || status=1
  else
    echo "pack: no $src in /tmp/mg3/runs (the session did not get that far; see session.log in logs.tar)" >&2
    status=1
  fi
done
tar -cf $OUT/logs.tar session.log bench.log train_throughput.json plan_flags.txt data_stage.log embedded/*/status.json \
  embedded/*/metrics.jsonl embedded/status.json embedded/pipeline.json embedded/data/engine_frames.log 2>/dev/null
ls -la $OUT
exit $status
