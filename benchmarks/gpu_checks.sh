#!/usr/bin/env bash
# Issue 26, items 1 and 2, for real on a machine with NVIDIA GPUs, in one command (about 3 minutes on one H100;
# not yet run: the session that wrote it had no GPU):
#
#     bash benchmarks/gpu_checks.sh 2>&1 | tee gpu_checks.log
#
# 1. One GPU per job (peftstudy.gpus): as many jobs at once as GPUs each see one device through torch, no two the
#    same (by UUID), and one job more waits until a device is handed back; then the CPU tests with simulated
#    devices (jobs never share one, kill -9 gives it back, `--resources gpu=N` with the local executor).
# 2. Memory that fits (runs.py): ViT-B/16 full fine-tunings at 224 px, the number at once measured to fit (the
#    log's `GPU memory:` line: footprint, free memory, runs at a time); then, held to a quarter of that memory,
#    the same job really runs out, goes on fewer at a time and ends with the unhindered job's results; then the
#    CPU tests that inject the error (bit-identical metrics, logits and weights).
# Each check prints what it measured (-s); a failure names the test. benchmarks/gpu_table.sh runs this first.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi -L
python -m pytest -q -s -rs -p no:cacheprovider tests/test_gpus.py tests/test_engine.py \
    -k "gpu or out_of_memory or runs_at_once" # all of test_gpus.py (its name matches), and those of test_engine
