#!/usr/bin/env bash
# The whole GPU part of the shipped shapes model as one command on a bare GPU machine (torch, transformers,
# accelerate, peft; no diffusers): installs the wheels that travel in .whl/ (training/prepare_gpu_run.sh), then runs
# training/train_shapes_gpu.py's stages at once on the one GPU: the VAE decoder fine-tune and both transformers
# (spacetime and per-frame, in lockstep). Clips are rendered on the GPU and MiniLM comes from the checkpoint, so no
# data travels. The run folder (fp16 weights, logs, results) comes back as $OUT/run.tar.part* (the device returns at
# most 8 files of at most 16 MiB each); a stage cut short still leaves its last saved weights in it. Here:
#   bash training/prepare_gpu_run.sh     # wheels, slim text encoder; shipped weights set aside (tree <= 64 MiB)
#   run(command="bash training/ship_on_gpu.sh", carry=[".whl", ".gpu_text_encoder"], timeout_s=560)
#   bash training/prepare_gpu_run.sh restore    # then: cat <files_at>/run.tar.part* | tar -x -C runs/gpu
# Knobs: STAGES ("vae dit"), VAE_TIME, DIT_TIME (seconds of training each), INIT_FROM (a returned run folder, carried:
# continue from its weights). CPU dry run at toy sizes (the test suite runs it): DRY_RUN=1 OUT=/tmp/x bash ...
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/ship_out}
RUN=$OUT/run
PYTHON=${PYTHON:-python3}
STAGES=${STAGES:-vae dit}
mkdir -p "$RUN"
start=$SECONDS
if [ -d .whl ] && ! $PYTHON -c "import diffusers" 2>/dev/null; then
  $PYTHON -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TQDM_DISABLE=1
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
echo "setup: $((SECONDS - start)) s"

if [ "${DRY_RUN:-0}" = 1 ]; then  # toy sizes, CPU, a few steps: the same code paths as the GPU run
  vae_args="--max_train_time 60 --max_train_steps 2 --train_batch_size 2 --num_eval_clips 2 --log_every 1 --mixed_precision no"
  dit_args="--max_train_time 60 --max_train_steps 3 --train_batch_size 4 --pool_size 8 --captions_per_combination 1"
  dit_args="$dit_args --num_eval_clips 3 --check_steps 2 --log_every 1 --probe_every 2 --mixed_precision no"
else
  vae_args="--max_train_time ${VAE_TIME:-330} --compile"
  dit_args="--max_train_time ${DIT_TIME:-300} --compile"
fi
init=${INIT_FROM:+--init_from $INIT_FROM}
# The slim text encoder of prepare_gpu_run.sh where it travelled (the full one is set aside to fit the device).
[ -d .gpu_text_encoder ] && dit_args="$dit_args --text_encoder .gpu_text_encoder"
declare -A pids
for stage in $STAGES; do
  args_var="${stage}_args"
  # shellcheck disable=SC2086
  $PYTHON training/train_shapes_gpu.py --stage "$stage" --output_dir "$RUN" ${!args_var} $init > "$RUN/$stage.log" 2>&1 &
  pids[$stage]=$!
done
failed=0
for stage in $STAGES; do
  wait "${pids[$stage]}"; rc=$?
  echo "$stage stage: rc $rc at $((SECONDS - start)) s"
  grep -v -E "it/s|s/it|Casting directly" "$RUN/$stage.log" | tail -n 25
  [ $rc = 0 ] || failed=1
done
rm -f "$OUT"/run.tar.part*
tar -C "$OUT" -cf - run | split -b 15000000 - "$OUT/run.tar.part" && rm -rf "$RUN"
ls -la "$OUT"
exit $failed
