#!/usr/bin/env bash
# A candidate embedded model against the shipped one on every test measure of the model card's tables, on this
# machine's CPU (2 threads), in the candidate's own sampler steps (its config's), one group after the other (each writes its
# metrics before the next starts), then the paired comparison of each group with the shipped model's reference run.
#   bash bench/eval_candidate.sh MODEL OUT [GROUP ...]
# GROUP: rs (reset frame and sharpness, ~1.5 min), paired (chunk 0 and the actions' effect, 18 episodes, ~9-14 min),
# memory (24 episodes, ~7 min), motion (12 starts, ~12 min); all four by default; stability (three rollouts of 121
# chunks, ~15 min), control (the inverse-dynamics model's key and mouse accuracy, 1,044 windows, ~5 min) and anywhere (chunk 0 on the train levels away from their start spots, 18 episodes, ~3 min; the
# shipped model gains +0.92 dB there, +1.93 from their start spots) only when named. STEPS=N sets the sampler steps (default: the candidate's own);
# exact (--context-cache off, as the reference runs) unless EVAL_ARGS, mg3 eval options added to every group, says
# otherwise (e.g. EVAL_ARGS='--context-cache on --context-cache-refresh 2').
# Writes OUT/GROUP/metrics.json (+ its PNGs), OUT/GROUP.log and OUT/compare_GROUP.json; prints each comparison.
set -u
if [ $# -lt 2 ]; then echo "usage: bash bench/eval_candidate.sh MODEL OUT [rs|paired|memory|motion|stability|control|anywhere ...]" >&2; exit 2; fi
model=$1; out=$2; shift 2
groups=${*:-rs paired memory motion}
cd "$(dirname "$0")/.."
ref=docs/embedded  # the shipped model's reference runs (session 46's student, 8 steps; anywhere: session 36's model)
# set parts and reference for group $1; 1 for an unknown group
group() {
  case $1 in
    rs) parts=(--parts reset,sharpness); reference=$ref/metrics_session46_student283_8steps_rs_cpu.json ;;
    paired) parts=(--parts fidelity,controllability --episodes 18); reference=$ref/metrics_session46_student283_8steps_paired18_cpu.json ;;
    memory) parts=(--parts memory --memory-episodes 24); reference=$ref/metrics_session46_student283_8steps_memory24_cpu.json ;;
    motion) parts=(--parts motion --motion-episodes 12); reference=$ref/metrics_session46_student283_8steps_motion12_cpu.json ;;
    stability) parts=(--parts stability); reference=$ref/metrics_session46_student283_8steps_stability3_cpu.json ;;
    control) parts=(--parts control); reference=$ref/metrics_session47_shipped_control_cpu.json ;;  # session 47 re-ran it: per episode
    anywhere) parts=(--parts fidelity --episodes 18 --split train --spawn anywhere); reference=$ref/metrics_session36_shipped_fidelity18_train_levels_anywhere_cpu.json ;;
    *) return 1 ;;
  esac
}
for g in $groups; do  # every group checked before any runs
  if ! group "$g"; then echo "eval_candidate: unknown group $g (rs, paired, memory, motion, stability, control, anywhere)" >&2; exit 2; fi
done
mkdir -p "$out"
status=0
steps=(); if [ -n "${STEPS:-}" ]; then steps=(--sampler-steps "$STEPS"); fi  # none: the candidate's own
read -r -a extra <<< "${EVAL_ARGS:-}"
for g in $groups; do
  group "$g"
  if ! mg3 eval --model "$model" --device cpu --threads 2 --context-cache off "${steps[@]}" "${extra[@]}" "${parts[@]}" \
      --out "$out/$g" > "$out/$g.log" 2>&1; then
    echo "eval_candidate: group $g failed; see $out/$g.log" >&2; status=1; continue
  fi
  echo "== $g"
  python -m mg3_eval.compare "$out/$g/metrics.json" "$reference" --json "$out/compare_$g.json" | tail -n +3
done
exit $status
