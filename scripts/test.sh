#!/usr/bin/env bash
# Runs every test: unit, end-to-end (in-process control plane, proxies, mock upstreams)
# and CLI tests. Works on a fresh machine with the Rust toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."
"$(dirname "$0")/install-test-deps.sh"
cargo test --workspace --no-fail-fast "$@"
