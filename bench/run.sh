#!/usr/bin/env bash
# One command for the whole benchmark: builds release binaries, installs wrk and nginx if
# missing, runs every scenario side by side (mock direct, nginx, a bare hyper proxy,
# sidecar-proxy) and prints
# the results table (also written to bench/results/). See docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v wrk >/dev/null || ! command -v nginx >/dev/null; then
  apt-get update -qq && apt-get install -y -qq wrk nginx-light >/dev/null
fi
cargo build --release --quiet -p sidecar-control-plane -p sidecar-data-plane -p sidecar-bench
exec python3 bench/run.py "$@"
