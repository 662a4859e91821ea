#!/usr/bin/env bash
# Print the training pipeline's status and the tail of its log.
source bench/gpu/setup.sh
python3 -m world_model.train status --run runs/embedded 2>&1 | tail -5
for s in data vae decoder encode base memory dmd export; do
  f=runs/embedded/$s/status.json; [ -f "$f" ] && python3 -c "import json,sys;d=json.load(open('$f'));print('$s', d.get('state'), d.get('step'), {k:round(v,4) if isinstance(v,float) else v for k,v in (d.get('metrics') or {}).items()}, d.get('eval'), d.get('steps_per_s'))"
done
tail -5 runs/embedded.log; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
# Once the pipeline has exported the student, also export the many-step teacher (memory-stage EMA)
# into export/base_model so the distillation comparison can run after the machine is gone.
if grep -q '"done"' runs/embedded/export/status.json 2>/dev/null && [ ! -d runs/embedded/export/base_model ]; then
  python3 -m world_model.train.teacher --run runs/embedded && echo "teacher exported"
fi
