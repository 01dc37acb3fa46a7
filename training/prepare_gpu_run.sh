#!/usr/bin/env bash
# Prepares what training/ship_on_gpu.sh needs on a bare GPU machine (Python 3.12 with torch, transformers,
# accelerate and peft, without diffusers): the wheels in .whl/ (git-ignored, 6 MB). Clips are rendered on the GPU and
# the text encoder and VAE are the checkpoint's, so no data travels. The device copies the working tree and refuses
# one over 64 MiB; with the shipped weights (72 MB) it is over, so this also sets the two shipped transformers'
# weights (which the GPU run does not read) aside in .gpu_aside/ (git-ignored). `restore` puts them back.
#   bash training/prepare_gpu_run.sh           then the device run (see ship_on_gpu.sh), then
#   bash training/prepare_gpu_run.sh restore
set -euo pipefail
cd "$(dirname "$0")/.."
ASIDE=(checkpoints/spacetime-shapes/transformer/diffusion_pytorch_model.safetensors
       checkpoints/spacetime-shapes-perframe-transformer/diffusion_pytorch_model.safetensors)
for ignored in /.whl/ /.gpu_aside/; do
  grep -qx "$ignored" .git/info/exclude 2>/dev/null || echo "$ignored" >> .git/info/exclude
done
if [ "${1:-}" = restore ]; then
  for path in "${ASIDE[@]}"; do [ -f ".gpu_aside/$path" ] && mv ".gpu_aside/$path" "$path"; done
  git status --short checkpoints
  exit 0
fi
rm -rf .whl && mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl "diffusers==0.42.1" importlib_metadata
for path in "${ASIDE[@]}"; do mkdir -p ".gpu_aside/$(dirname "$path")" && mv "$path" ".gpu_aside/$path"; done
git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | awk '{printf "tracked files now: %.1f MiB (+ .whl, the limit is 64)\n", $1 / 1048576}'
