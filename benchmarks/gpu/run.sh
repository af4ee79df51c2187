#!/usr/bin/env bash
# The GPU in one call: run on a CUDA machine from the repository root, with .gpu-carry/ beside it
# (benchmarks/gpu/pack.sh writes it). Results go to $1, else $OUT (a lent machine's return folder),
# else gpu-results/. See docs/gpu.md.
set -uo pipefail
cd "$(dirname "$0")/../.."
out="${1:-${OUT:-gpu-results}}"
shift $(( $# > 0 ? 1 : 0 ))
python3 benchmarks/gpu/run.py --out "$out" "$@"
