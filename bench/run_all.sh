#!/usr/bin/env bash
# Re-measure every figure in bench/RESULTS.md on this machine (2 CPU cores: about 15 minutes).
# Run it on a quiet machine: the figures are throughput, and anything else running skews them.
# Each command appends JSON lines; `fasthpt bench plot` draws the latest row per configuration.
set -euo pipefail
cd "$(dirname "$0")/.."
F=.venv/bin/fasthpt
SCRATCH=${SCRATCH:-/tmp/fasthpt-bench}

# 600 real-photo crops stored as 256 px JPEGs (quality 90): the size of RESISC-45's and UC Merced's images
$F prep --dataset natural --num-images 600 --image-size 256 --out "$SCRATCH" --no-progress
$F prep --dataset sat --out data --no-progress   # the demo's target data (64 px)

# loaders: 224 px views from 256 px JPEGs, and the demo's 56 px views from 64 px images
$F bench loaders --data "$SCRATCH/natural" --backends torch,ffcv,dali --res 224 --batch 64 --workers 2 \
   --repeats 3 --json bench/loaders.jsonl
$F bench loaders --data data/sat --backends torch,ffcv,dali --res 56 --batch 64 --workers 2 \
   --repeats 3 --json bench/loaders.jsonl

# training: Composer algorithm sets without a loader, then each loader feeding the demo's model
$F bench train --data synthetic --res 56 --batch 64 --repeats 3 --batches 15 \
   --algorithms "none;channels_last;progressive_resizing;channels_last,progressive_resizing;blurpool;layer_freezing" \
   --json bench/train.jsonl
$F bench train --data data/sat --backends ffcv,dali,torch --algorithms "channels_last" --res 56 --batch 64 \
   --workers 2 --repeats 3 --batches 30 --json bench/train.jsonl

.venv/bin/python bench/prep_bench.py --runs 3 --workers 2
$F bench plot
