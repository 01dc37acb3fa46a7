#!/usr/bin/env bash
# Prepares what training/ship_on_gpu.sh needs on a bare GPU machine (Python 3.12 with torch, transformers,
# accelerate and peft, without diffusers), all git-ignored: the wheels in .whl/ (6 MB) and the MiniLM text encoder
# with only the word embeddings the shapes captions use in .gpu_text_encoder/ (22 MB: training/slim_text_encoder.py).
# Clips are rendered on the GPU and the VAE is the checkpoint's, so no data travels. The device copies the working
# tree and refuses one over 64 MiB (the shipped weights alone are 72 MB), so this also sets the full text encoder and
# the two shipped transformers' weights, which the run does not read, aside in .gpu_aside/. With INIT_FROM=<a
# returned run folder> it copies what a continuation needs (both transformers, dit_state.json) to .gpu_init/.
#   bash training/prepare_gpu_run.sh
#   run(command="bash training/ship_on_gpu.sh", carry=[".whl", ".gpu_text_encoder"], timeout_s=560)
#       (continuing: command="INIT_FROM=.gpu_init bash training/ship_on_gpu.sh", and ".gpu_init" carried too)
#   bash training/prepare_gpu_run.sh restore
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
ASIDE=(checkpoints/spacetime-shapes/text_encoder
       checkpoints/spacetime-shapes/transformer/diffusion_pytorch_model.safetensors
       checkpoints/spacetime-shapes-perframe-transformer/diffusion_pytorch_model.safetensors)
for ignored in /.whl/ /.gpu_aside/ /.gpu_text_encoder/ /.gpu_init/; do
  grep -qx "$ignored" .git/info/exclude 2>/dev/null || echo "$ignored" >> .git/info/exclude
done
if [ "${1:-}" = restore ]; then
  for path in "${ASIDE[@]}"; do [ -e ".gpu_aside/$path" ] && mv ".gpu_aside/$path" "$path"; done
  git status --short checkpoints
  exit 0
fi
rm -rf .whl && mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl "diffusers==0.42.1" importlib_metadata
"$PYTHON" training/slim_text_encoder.py checkpoints/spacetime-shapes .gpu_text_encoder
if [ -n "${INIT_FROM:-}" ]; then
  rm -rf .gpu_init && mkdir -p .gpu_init
  cp -r "$INIT_FROM"/transformer_spacetime "$INIT_FROM"/transformer_frame "$INIT_FROM"/dit_state.json .gpu_init/
fi
for path in "${ASIDE[@]}"; do
  [ -e "$path" ] && mkdir -p ".gpu_aside/$(dirname "$path")" && mv "$path" ".gpu_aside/$path"
done
git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | awk '{printf "tracked files left: %.1f MiB\n", $1 / 1048576}'
du -sh .whl .gpu_text_encoder $([ -d .gpu_init ] && echo .gpu_init) || true
echo "the device's limit: 64 MiB for the tracked files plus what is carried"
