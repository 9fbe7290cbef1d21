#!/usr/bin/env bash
# Installs what the test suite needs beyond the Rust toolchain. Idempotent; fast when
# everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
# cargo-fuzz for the fuzz targets' smoke run (scripts/fuzz.sh): built from crates.io at
# the pinned version; it runs on the stable toolchain with RUSTC_BOOTSTRAP=1.
if ! cargo fuzz --version 2>/dev/null | grep -q '0.13.2'; then
  cargo install cargo-fuzz --version 0.13.2 --locked --quiet
fi
# Python packages for the tests (the official `openai` client, the v1alpha reflection
# client) go into a virtualenv under target/, never into the machine's own Python. Tests
# find it at target/test-venv (or $SIDECAR_TEST_PYTHON).
VENV=target/test-venv
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
if [ ! -f "$VENV/.installed" ] || [ tests/python/requirements.txt -nt "$VENV/.installed" ]; then
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt
  touch "$VENV/.installed"
fi
# The browser console's end-to-end tests drive Debian's Chromium with playwright-core.
if [ ! -x /usr/bin/chromium ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
# The PostgreSQL store's tests start a private server from Debian's postgresql package
# (initdb + postgres in a temp dir, as the postgres user) unless SIDECAR_TEST_DATABASE_URL
# names one; the package's own cluster is not needed and is stopped if it started.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || ! command -v psql >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet postgresql 2>/dev/null; then
    $SUDO systemctl disable --now --quiet postgresql || true
  fi
fi
# deploy/tests/test_deploy.py: promtool (Debian's prometheus package) checks and unit-tests
# the alert rules; kubectl renders the Kubernetes manifests (offline). Debian's archive has
# no kubectl: it is installed when a configured apt repository offers it (pkgs.k8s.io,
# Google Cloud's), else the Kubernetes checks are skipped with a notice.
if ! command -v promtool >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  # Only promtool is wanted: do not leave the Prometheus server the package starts running.
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
    $SUDO systemctl disable --now --quiet prometheus || true
  fi
fi
if ! command -v kubectl >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO=sudo
  if apt-cache policy kubectl 2>/dev/null | grep -q 'Candidate: [0-9]'; then
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kubectl >/dev/null
  else
    echo "install-test-deps: no kubectl in this machine's apt sources; the Kubernetes checks of deploy/ will be skipped" >&2
  fi
fi
# The console's npm packages, at the exact versions of web-ui/package-lock.json; again
# only when node_modules is missing or older than the lock file.
if [ ! -f web-ui/node_modules/.package-lock.json ] \
  || [ web-ui/package-lock.json -nt web-ui/node_modules/.package-lock.json ]; then
  npm --prefix web-ui ci --no-audit --no-fund --loglevel=error
fi
