#!/usr/bin/env bash
# Runs every test: unit, end-to-end (in-process control plane, proxies, mock upstreams),
# CLI tests, the browser console's end-to-end tests (headless Chromium), the deploy/ checks
# (image, Kubernetes, alerts, dashboard), and a smoke run of the fuzz targets. Works on a
# fresh machine with the Rust toolchain, Node/npm and apt (install-test-deps.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
"$(dirname "$0")/install-test-deps.sh"
status=0
cargo test --workspace --no-fail-fast "$@" || status=$?
# The browser console: build it (client generated from proto/), then its end-to-end tests
# in headless Chromium against the debug binaries (cargo test built them already; the
# build below is then a no-op).
cargo build --quiet -p sidecar-control-plane -p sidecar-data-plane --bins || status=$?
npm --prefix web-ui run build || status=$?
npm --prefix web-ui test || status=$?
# deploy/: the container image, the Kubernetes manifests, the alert rules (promtool) and
# the Grafana dashboard, checked against the sources (no cargo, no cluster, no Docker).
python3 deploy/tests/test_deploy.py || status=$?
# A short smoke run of every fuzz target (10 s each; longer runs by hand: docs/proxy.md).
# SIDECAR_FUZZ_SECONDS=0 skips it.
if [ "${SIDECAR_FUZZ_SECONDS:-10}" != 0 ]; then
  scripts/fuzz.sh "${SIDECAR_FUZZ_SECONDS:-10}" || status=$?
fi
exit "$status"
