#!/usr/bin/env bash
# A session's teacher (the int8 export of its memory stage) against session 52's teacher, the A/B base since session
# 53, on this machine's CPU (2 threads), at 16 sampler steps and exact (--context-cache off), as session 52's
# reference runs: one group after the other (each writes its results before the next starts), then the paired
# comparison of each mg3 eval group with session 52's run.
#   bash bench/judge_teacher.sh MODEL OUT [GROUP ...]
# GROUP: control (the IDM's keys and yaw, 1,044 windows, with the feasible / blocked split and as_simulated, ~7 min),
# paired (chunk 0 and the actions' effect, 18 test-level episodes, ~12 min), generated (chunk 0 on 12 generated levels,
# ~5 min), train (chunk 0 on the train levels from their start spots, 18 episodes, ~9 min), retextured (the same
# episodes in looks no training episode had, ~9 min; with both, bench/look_recall.py: the dB the DiT recalls of the
# train levels' looks), stability (three rollouts of 121 chunks, ~30 min; only when named), strafe
# (bench/strafe_pathways.py, 24 test-level points, ~3 min; session 52's teacher:
# bench/results/strafe_pathways_test_anywhere_teacher_s52_cpu.json) and depth (bench/depth_probe.py, 24 windows,
# ~1 min; bench/results/depth_probe_test_cpu_session52_teacher.json); all but stability by default.
# Writes OUT/GROUP/metrics.json, OUT/GROUP.log and OUT/compare_GROUP.json (strafe, depth: OUT/GROUP.json and .log);
# prints each comparison.
set -u
if [ $# -lt 2 ]; then echo "usage: bash bench/judge_teacher.sh MODEL OUT [control|paired|generated|train|retextured|stability|strafe|depth ...]" >&2; exit 2; fi
model=$1; out=$2; shift 2
groups=${*:-control paired generated train retextured strafe depth}
cd "$(dirname "$0")/.."
ref=docs/embedded/metrics_session52_memory3487_16steps  # session 52's teacher (.carry/e52) in the same runs
# set parts and reference for mg3 eval group $1 (bench: the bench script's command instead); 1 for an unknown group
group() {
  bench=()
  case $1 in
    control) parts=(--parts control); reference=${ref}_control_split_cpu.json ;;
    paired) parts=(--parts fidelity,controllability --episodes 18); reference=${ref}_paired18_cpu.json ;;
    generated) parts=(--parts fidelity --episodes 12 --split generated); reference=${ref}_fidelity12_generated_levels_cpu.json ;;
    train) parts=(--parts fidelity --episodes 18 --split train); reference=${ref}_fidelity18_train_levels_cpu.json ;;
    retextured) parts=(--parts fidelity --episodes 18 --split retextured); reference=${ref}_fidelity18_retextured_levels_cpu.json ;;
    stability) parts=(--parts stability); reference=${ref}_stability3_cpu.json ;;
    strafe) bench=(python bench/strafe_pathways.py --model "$model" --split test --spawn anywhere --starts 4 --json "$out/strafe.json") ;;
    depth) bench=(python bench/depth_probe.py --model "$model" --split test --windows 24 --json "$out/depth.json") ;;
    *) return 1 ;;
  esac
}
for g in $groups; do  # every group checked before any runs
  if ! group "$g"; then echo "judge_teacher: unknown group $g (control, paired, generated, train, retextured, stability, strafe, depth)" >&2; exit 2; fi
done
mkdir -p "$out"
status=0
for g in $groups; do
  group "$g"
  echo "== $g $(date +%T)"
  if [ ${#bench[@]} -gt 0 ]; then
    if ! "${bench[@]}" > "$out/$g.log" 2>&1; then echo "judge_teacher: $g failed; see $out/$g.log" >&2; status=1; continue; fi
    tail -12 "$out/$g.log"
    continue
  fi
  if ! mg3 eval --model "$model" --device cpu --threads 2 --context-cache off --sampler-steps 16 "${parts[@]}" \
      --out "$out/$g" > "$out/$g.log" 2>&1; then
    echo "judge_teacher: group $g failed; see $out/$g.log" >&2; status=1; continue
  fi
  if [ ! -f "$reference" ]; then echo "judge_teacher: no reference run $reference; $g's metrics: $out/$g/metrics.json" >&2; status=1; continue; fi
  python -m mg3_eval.compare "$out/$g/metrics.json" "$reference" --json "$out/compare_$g.json" | tail -n +3
done
if [ -f "$out/train/metrics.json" ] && [ -f "$out/retextured/metrics.json" ]; then
  echo "== recalled looks"
  python bench/look_recall.py "$out/train/metrics.json" "$out/retextured/metrics.json" --json "$out/look_recall.json" || status=1
fi
exit $status
