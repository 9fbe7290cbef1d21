#!/usr/bin/env bash
# One command for the whole benchmark: builds release binaries, installs wrk and nginx
# (Debian packages) and oha (crates.io, into target/bench-tools) if missing, runs every
# scenario side by side (mock direct, nginx, a bare hyper proxy, sidecar-proxy) and prints
# the results table (also written to bench/results/). See docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v wrk >/dev/null || ! command -v nginx >/dev/null; then
  apt-get update -qq && apt-get install -y -qq wrk nginx-light >/dev/null
fi
# oha drives the fixed-rate latency scenario (open loop, corrected for coordinated omission).
OHA_VERSION=1.16.0
if ! command -v oha >/dev/null && ! [ -x target/bench-tools/bin/oha ]; then
  echo "installing oha $OHA_VERSION from crates.io (a few minutes, once)"
  cargo install --quiet --locked oha --version "$OHA_VERSION" --root target/bench-tools
fi
cargo build --release --quiet -p sidecar-control-plane -p sidecar-data-plane -p sidecar-bench
exec python3 bench/run.py "$@"
