#!/usr/bin/env bash
# One-shot GPU run of the pipeline and feature benchmarks (bf16, random weights, ~3 min on an H100/H200).
#
#   OUT=/some/folder bash benchmarks/run_gpu.sh      # from the repository root; OUT defaults to benchmarks/results
#
# Needs torch with CUDA, transformers, accelerate, peft, matplotlib; diffusers comes from the wheel in .whl/
# (an ignored folder: carry it to the GPU machine). The package is used from the checkout (PYTHONPATH), not
# installed. Both scripts keep to a time budget (seconds since their start; later cases are skipped, not lost):
# pipeline 45 s, features 170 s. Each writes Markdown + JSON (+ the PNG cost curve) into $OUT and a log.
set -e
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results}"
mkdir -p "$OUT"
SITE="${SITE:-/tmp/site}"  # where the diffusers wheel is unpacked
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl && export PYTHONPATH="$SITE:$PWD"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt" || true

# DRY_RUN=1: the same command line on the CPU at toy sizes (checks this script and the GPU code paths)
DEVICE=(--device cuda --dtype bf16)
if [ -n "${DRY_RUN:-}" ]; then DEVICE=(--device cpu --preset gpu --dry-run); fi

set -o pipefail
status=0
python3 benchmarks/bench_pipeline.py "${DEVICE[@]}" --quick --time-budget 45 --output-dir "$OUT" \
    2>&1 | tee "$OUT/pipeline_log.txt" || status=1
python3 benchmarks/bench_features.py "${DEVICE[@]}" --quick --time-budget 170 --output-dir "$OUT" \
    2>&1 | tee "$OUT/features_log.txt" || status=1
exit $status
