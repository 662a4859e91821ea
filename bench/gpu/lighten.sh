#!/usr/bin/env bash
# Keep the embedded model's weights (38 MB), the docs' images (10 MB) and bench/gpu/state (7 MB), none needed on the
# GPU machine, out of the working tree while GPU calls send it, so that a call can carry ~63 MB of parts (64 MiB per call).
#   bash bench/gpu/lighten.sh out    move them to .carry/hold/ (ignored; travels only if a call names it)
#   bash bench/gpu/lighten.sh back   put them back (also: git checkout -- world_model/assets/embedded)
# Run no tests while they are out: the embedded default model cannot load.
set -eu
cd "$(dirname "$0")/../.."
emb=world_model/assets/embedded
case "${1:-}" in
  out)
    # every weight file (vae.safetensors; the DiT folder base_distilled_model/, or high_noise_model/ and
    # low_noise_model/ for a model of two experts), kept at its path under .carry/hold
    (cd $emb && find . -name '*.safetensors*' -type f) | while read -r f; do
      mkdir -p ".carry/hold/$(dirname "$f")" && mv "$emb/$f" ".carry/hold/$f"
    done
    # the docs' images are tracked and unchanged: git restores them
    git diff --quiet -- docs && git ls-files -z 'docs/*.png' | xargs -0 rm -f
    # and the training state kept in git (bench/gpu/state: 7.2 MB; the session that needs it carries it in .carry)
    git diff --quiet -- bench/gpu/state && git ls-files -z bench/gpu/state | xargs -0 rm -f
    echo "embedded weights held in .carry/hold; the tree now sends $(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1) bytes"
    ;;
  back)
    if [ -d .carry/hold ]; then
      (cd .carry/hold && find . -type f) | while read -r f; do
        mkdir -p "$emb/$(dirname "$f")" && mv ".carry/hold/$f" "$emb/$f"
      done
      rm -rf .carry/hold
    fi
    # only what `out` removed (deleted tracked files): an edit made meanwhile (the model card) stays
    git ls-files -d -z -- $emb docs bench/gpu/state | xargs -0 -r git checkout --
    git status --short -- $emb docs bench/gpu/state
    echo "embedded weights back"
    ;;
  *) echo "usage: bash bench/gpu/lighten.sh out|back" >&2; exit 2 ;;
esac
