#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for SECONDS each (default 10: the smoke run of
# scripts/test.sh). Uses the default (stable) toolchain with RUSTC_BOOTSTRAP=1, since
# cargo-fuzz passes nightly-only flags: no nightly is required. A crash fails the run and
# leaves the input in fuzz/artifacts/TARGET/. Usage: scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds=${1:-10}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(request_body usage retry_after snapshot proxy_config report_batch control_config)
fi
export RUSTC_BOOTSTRAP=1
# Panics are what the targets check for; no sanitizer is needed for safe Rust, and
# without one a run does several times more inputs.
flags=(--sanitizer none -O)
cargo fuzz build "${flags[@]}"
for target in "${targets[@]}"; do
  mkdir -p "corpus/$target"
  seeds=()
  [ -d "seeds/$target" ] && seeds=("seeds/$target")
  log=$(mktemp)
  if ! cargo fuzz run "${flags[@]}" "$target" "corpus/$target" "${seeds[@]}" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 >"$log" 2>&1; then
    tail -n 40 "$log"
    echo "fuzz: $target FAILED (input in fuzz/artifacts/$target/)" >&2
    rm -f "$log"
    exit 1
  fi
  echo "fuzz: $target $(grep -E '^Done [0-9]+ runs' "$log" || echo 'ran') — $(grep -oE 'cov: [0-9]+' "$log" | tail -1)"
  rm -f "$log"
done
