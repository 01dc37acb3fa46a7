#!/usr/bin/env bash
# One-shot GPU run of the shipped model's `vae` and `dit` stages (training/ship_shapes_model.sh) on a machine that has
# torch but neither diffusers, PyAV nor the text encoder: wheels travel in .whl/, the clips and their caption
# embeddings in data/ship/ (made here by training/prepare_gpu_run.sh). Weights come back in $OUT as fp16 safetensors (a split
# tar), with the training logs; `assemble` then builds the pipeline folder where the text encoder is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TQDM_DISABLE=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
export PYTHON=python3 DATA=data/ship WORK=/tmp/ship MIXED_PRECISION=bf16 WORKERS=8 VALIDATE=0
export VAE_BATCH=${VAE_BATCH:-16} VAE_STEPS=${VAE_STEPS:-1500} VAE_TIME=${VAE_TIME:-90}
export DIT_BATCH=${DIT_BATCH:-64} DIT_STEPS=${DIT_STEPS:-20000} DIT_TIME=${DIT_TIME:-75}
OUT=${OUT:-/tmp/ship_out}
mkdir -p "$OUT"

pack() {  # fp16 copies of what exists so far, tarred and split in 15 MB parts (the device returns files <= 16 MiB)
  python3 - "$WORK" "$OUT/weights" <<'PY'
import shutil, sys
from pathlib import Path

import torch

from diffusers_spacetime import AutoencoderKLSpacetime, SpacetimeDiTModel

work, out = Path(sys.argv[1]), Path(sys.argv[2])
shutil.rmtree(out, ignore_errors=True)
vae_run = next((work / name for name in ("vae_color", "vae_ft") if (work / name / "vae").is_dir()), work / "vae")  # last phase
if (vae_run / "vae").is_dir():
    AutoencoderKLSpacetime.from_pretrained(vae_run / "vae", torch_dtype=torch.float16).save_pretrained(out / "vae")
for span in ("spacetime", "frame"):
    run = work / f"dit_{span}"
    if (run / "pipeline").is_dir():
        model = SpacetimeDiTModel.from_pretrained(run / "pipeline", subfolder="transformer", torch_dtype=torch.float16)
        model.save_pretrained(out / f"transformer_{span}")
        shutil.copytree(run / "pipeline" / "scheduler", out / "scheduler", dirs_exist_ok=True)
        shutil.copy(run / "pipeline" / "model_index.json", out / "model_index.json")
for log in ["vae", "vae_ft", "vae_color"] + [f"dit_{span}" for span in ("spacetime", "frame")]:
    for name in ("results.json", "train_log.jsonl"):
        if (work / log / name).is_file():
            (out / "logs" / log).mkdir(parents=True, exist_ok=True)
            shutil.copy(work / log / name, out / "logs" / log / name)
PY
  rm -f "$OUT"/weights.tar.part*
  tar -C "$OUT" -cf - weights | split -b 15000000 - "$OUT/weights.tar.part"
  rm -rf "$OUT/weights"
  ls -la "$OUT"
}

start=$SECONDS
bash training/ship_shapes_model.sh vae
echo "vae stage: $((SECONDS - start)) s"; pack
bash training/ship_shapes_model.sh dit
echo "vae + dit stages: $((SECONDS - start)) s"; pack
