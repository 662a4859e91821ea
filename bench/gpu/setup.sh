#!/usr/bin/env bash
# On the lent GPU machine: install the carried wheels (gymnasium, sb3) and the carried site tarball
# (av + vizdoom, xz-compressed to fit the 64 MiB carry limit) into /tmp/site. Idempotent.
# Usage (from the repo root): source bench/gpu/setup.sh
if [ ! -f /tmp/site/.mg3_ready ]; then
  mkdir -p /tmp/site
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/small/*.whl
  if [ -f .whl/big/site.tar.xz ]; then
    tar -xJf .whl/big/site.tar.xz -C /tmp  # the archive holds site/...
  fi
  touch /tmp/site/.mg3_ready
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
