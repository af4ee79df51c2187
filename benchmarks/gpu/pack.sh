#!/usr/bin/env bash
# Write .gpu-carry/: what a GPU machine without network needs beside the repository (the base model's
# weights in float16, the BBC data, a trimmed bitsandbytes), then print the bytes that travel.
# Run from an environment with lean[all] installed. See docs/gpu.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
python benchmarks/gpu/carry.py pack "${1:-.gpu-carry}"
