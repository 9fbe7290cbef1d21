#!/usr/bin/env bash
# Installs what the test suite needs beyond the Rust toolchain. Idempotent.
set -euo pipefail
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
