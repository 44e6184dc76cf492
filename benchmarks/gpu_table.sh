#!/usr/bin/env bash
# Every GPU row of the README's speed table and the VTAB-1K projection, in one command (estimated 20-25 minutes
# on an H100 or H200 with every loop timed 3 times, --repeats; not yet run: no GPU so far), plus the guards that
# need a GPU (benchmarks/gpu_checks.sh first, then bf16 against fp32 and runs together against alone):
#
#     bash benchmarks/gpu_table.sh 2>&1 | tee gpu_table.log
#
# ViT-B/16 at 224 px from 320 px JPEGs, the protocol's batch of 64, drop-path 0.1, the five methods the
# issue names (the linear probe with its live backbone). Pass 1: eager fp32 and bf16 (the data path apart
# from the precision) and bf16 with 4 runs at once. Pass 2: compiled with CUDA graphs, alone and 4 at once.
# Each pass ends with the projection's arithmetic and its `speedup=` line. Pass 1 also appends its eager rates
# of one run alone to gpu_throughput.csv, in the format of src/peftstudy/tables/throughput.csv: copy the bf16
# rows there (`peftstudy estimate --gpu <name>` then uses them).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
# One GPU per job, and runs at once that fit in memory (issue 26): ~3 minutes. A failure there does not stop the
# table; the script exits with its status at the end.
checks=0
bash benchmarks/gpu_checks.sh || checks=$?
sweep=$((9804 * 100 * 800 + 304 * 100 * 1000)) # VTAB-1K: tune and final training images
common=(--arch vit_base_patch16_224 --image-size 224 --native-size 320 --n 512 --batch-size 64 --epochs 2
    --threads 8 --workers 4 --runs-per-cache 530 --sweep-images "$sweep" --device cuda
    --methods linear bitfit lora rand_h_adapter full)
python benchmarks/train_throughput.py "${common[@]}" --precisions fp32 bf16 --concurrent 4 --csv gpu_throughput.csv
python benchmarks/train_throughput.py "${common[@]}" --precisions bf16 --compile reduce-overhead --concurrent 4
# bf16 against fp32, and runs trained together against alone, on the GPU (both tests take the GPU when present).
python -m pytest tests/test_engine.py -q -k "bf16_and_fp32 or together or alone" -p no:cacheprovider
exit "$checks"
