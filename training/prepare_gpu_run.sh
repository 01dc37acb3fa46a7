#!/usr/bin/env bash
# Prepares what training/ship_on_gpu.sh carries to a bare GPU machine (Python 3.12, torch, no diffusers/PyAV/ffmpeg/
# text encoder): the wheels in .whl/ and the clips with their caption embeddings in data/ship/ (both git-ignored;
# about 63 MB together, under the device tool's 64 MiB carry limit). Then, with the device tool:
#   run(command="set -o pipefail; bash training/ship_on_gpu.sh 2>&1 | tr '\r' '\n' | grep -v -E 'it/s|s/it' | tee $OUT/log.txt",
#       carry=[".whl", "data/ship"])
# and here: unpack $OUT/weights.tar.part* into runs/shapes (cat ... | tar -x), then
#   bash training/ship_shapes_model.sh assemble evaluate
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
grep -qx "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >> .git/info/exclude
rm -rf .whl && mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl "diffusers==0.42.1" importlib_metadata "av==18.1.0"
rm -rf data/ship
PYTHON=$PYTHON DATA=data/ship NUM_CLIPS=${NUM_CLIPS:-1400} bash training/ship_shapes_model.sh data
mkdir -p data/ship_meta && mv data/ship/ground_truth.jsonl data/ship_meta/  # not needed for training: keeps the carry small
du -sh .whl data/ship
