#!/usr/bin/env bash
# Keep the embedded model's weights (38 MB, not needed for training) out of the working tree while
# GPU calls send it, so that a call can carry ~60 MB of parts instead of ~24 MB (64 MiB per call).
#   bash bench/gpu/lighten.sh out    move them to .carry/hold/ (ignored; travels only if a call names it)
#   bash bench/gpu/lighten.sh back   put them back (also: git checkout -- world_model/assets/embedded)
# Run no tests while they are out: the embedded default model cannot load.
set -eu
cd "$(dirname "$0")/../.."
files="world_model/assets/embedded/vae.safetensors world_model/assets/embedded/base_distilled_model"
case "${1:-}" in
  out)
    mkdir -p .carry/hold/base_distilled_model
    mv world_model/assets/embedded/vae.safetensors .carry/hold/
    mv world_model/assets/embedded/base_distilled_model/*.safetensors* .carry/hold/base_distilled_model/
    echo "embedded weights held in .carry/hold; the tree now sends $(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1) bytes"
    ;;
  back)
    if [ -d .carry/hold ]; then
      mv .carry/hold/vae.safetensors world_model/assets/embedded/ 2>/dev/null || true
      mv .carry/hold/base_distilled_model/* world_model/assets/embedded/base_distilled_model/ 2>/dev/null || true
      rm -rf .carry/hold
    fi
    git checkout -- $files
    git status --short -- world_model/assets/embedded
    echo "embedded weights back"
    ;;
  *) echo "usage: bash bench/gpu/lighten.sh out|back" >&2; exit 2 ;;
esac
