#!/usr/bin/env bash
# Installs what the test suite needs beyond the Rust toolchain. Idempotent; fast when
# everything is already there.
set -euo pipefail
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
# The official OpenAI Python client, for the "real client nobody here wrote" test.
if ! python3 -c 'import openai' 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check 'openai==1.109.1' \
    || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages 'openai==1.109.1'
fi
