#!/usr/bin/env bash
# Starts a working Sidecar on this machine: the control plane (embedded sled storage)
# and a proxy, with a key and tokens generated on first run and kept in ./data/dev.env.
# Stop with Ctrl-C. It builds the binaries with cargo, and the browser console with npm
# when web-ui/dist is missing or older than its sources.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${SIDECAR_HOME:-$PWD/data}"
mkdir -p "$DATA"
chmod 700 "$DATA"

# cargo's own progress bar shows on a terminal; the first build on a fresh machine takes
# about 5 minutes on 2 cores (later ones only rebuild what changed).
if [ ! -x target/release/sidecar-control ]; then
  echo "building (release) — the first build takes about 5 minutes on 2 cores…" >&2
else
  echo "building (release)…" >&2
fi
cargo build --release --bins
BIN="$PWD/target/release"

ENV_FILE="$DATA/dev.env"
if [ ! -f "$ENV_FILE" ]; then
  umask 077
  rand() { head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
  {
    echo "SIDECAR_ENCRYPTION_KEY=$("$BIN/sidecar-control" gen-key)"
    echo "SIDECAR_ADMIN_TOKEN=sct_$(rand)"
    echo "SIDECAR_NODE_TOKEN=sct_$(rand)"
  } > "$ENV_FILE"
  echo "generated a key and tokens in $ENV_FILE (keep it private)" >&2
fi
set -a
# shellcheck disable=SC1090
. "$ENV_FILE"
set +a

# The browser console (web-ui/dist, served by the control plane at /): built when it is
# missing or older than its sources. Without npm the gateway still starts, console-less.
console_stale() {
  [ -f web-ui/dist/index.html ] || return 0
  [ -n "$(find web-ui/src web-ui/index.html web-ui/package.json web-ui/package-lock.json web-ui/vite.config.js \
    web-ui/buf.gen.yaml web-ui/tsconfig.json proto/sidecar -newer web-ui/dist/index.html \
    -not -path 'web-ui/src/gen/*' -print -quit 2>/dev/null)" ]
}
if console_stale; then
  if command -v npm >/dev/null 2>&1; then
    echo "building the console (web-ui)…" >&2
    if ! {
      if [ ! -f web-ui/node_modules/.package-lock.json ] \
        || [ web-ui/package-lock.json -nt web-ui/node_modules/.package-lock.json ]; then
        npm --prefix web-ui ci --no-audit --no-fund --loglevel=error
      fi
      npm --prefix web-ui run build --silent
    } >&2; then
      echo "the console build failed; starting without the console (see the output above)" >&2
    fi
  else
    echo "npm not found: starting without the browser console (see docs/console.md)" >&2
  fi
fi

pids=()
cleanup() {
  # Proxy first (it delivers its last usage to the control plane), then the control plane.
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill -TERM "${pids[i]}" 2>/dev/null || true
    wait "${pids[i]}" 2>/dev/null || true
  done
}
trap cleanup EXIT INT TERM

SIDECAR_DATA_DIR="$DATA/control" "$BIN/sidecar-control" &
pids+=($!)

# Wait until the control plane listens, so the proxy's first connection succeeds.
for _ in $(seq 1 100); do
  (exec 3<>/dev/tcp/127.0.0.1/9290) 2>/dev/null && break
  sleep 0.1
done

if [ -x "$BIN/sidecar-proxy" ]; then
  SIDECAR_DATA_DIR="$DATA/proxy" SIDECAR_CACHE_KEY="$SIDECAR_ENCRYPTION_KEY" "$BIN/sidecar-proxy" &
  pids+=($!)
fi

cat >&2 <<MSG

Sidecar is running.
  console        http://127.0.0.1:9290/  (sign in with SIDECAR_ADMIN_TOKEN from $ENV_FILE)
  control plane  gRPC/gRPC-web http://127.0.0.1:9290   ops http://127.0.0.1:9291/metrics
  proxy          OpenAI API    http://127.0.0.1:9190/v1 ops http://127.0.0.1:9191/status

Add a backend (in another shell):
  export SIDECAR_TOKEN=\$(grep ADMIN_TOKEN $ENV_FILE | cut -d= -f2)
  $BIN/sidecarctl backend add --name openai --base-url https://api.openai.com/v1 \\
      --api-key-env OPENAI_API_KEY --rpm 60 --model gpt-4o-mini
Send a first request:
  curl http://127.0.0.1:9190/v1/chat/completions -H 'content-type: application/json' \\
      -d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'

MSG
wait -n
