#!/bin/bash
# Entrypoint of the Sidecar image (deploy/container/Dockerfile): one image, the role comes
# from the first argument. Everything after it goes to the binary unchanged; settings come
# from SIDECAR_* environment variables (docs/control-plane.md, docs/proxy.md).
set -euo pipefail

usage() {
  cat <<'USAGE'
Sidecar image. Usage: <role> [arguments]

  control [flags]       the control plane (sidecar-control); needs SIDECAR_ENCRYPTION_KEY
  proxy [flags]         a proxy (sidecar-proxy); needs SIDECAR_CONTROL_URL and a node credential
  sidecarctl ARGS...    the CLI, e.g. `sidecarctl --server http://control:9290 nodes`
  gen-key               print a fresh 64-hex key (SIDECAR_ENCRYPTION_KEY, SIDECAR_CACHE_KEY)
  healthcheck           GET /health on the ops port of the role running in this container
  help                  this text

Defaults in the image: SIDECAR_DATA_DIR=/data, the control plane on 0.0.0.0:9290 (ops
0.0.0.0:9291), the proxy on 0.0.0.0:9190 (ops 0.0.0.0:9191). See docs/operations.md.
USAGE
}

# GET /health on the ops port of the sidecar process running in this container: the
# control plane's SIDECAR_CONTROL_OPS_LISTEN (default port 9291) or the proxy's
# SIDECAR_OPS_LISTEN (default port 9191). Exit 0 on HTTP 200. Plain bash (/dev/tcp): the
# image has no curl.
healthcheck() {
  local comm addr="" host port status
  for f in /proc/[0-9]*/comm; do
    comm=$(cat "$f" 2>/dev/null) || continue
    case "$comm" in
      sidecar-control) addr=${SIDECAR_CONTROL_OPS_LISTEN:-127.0.0.1:9291}; break ;;
      sidecar-proxy) addr=${SIDECAR_OPS_LISTEN:-127.0.0.1:9191}; break ;;
    esac
  done
  if [ -z "$addr" ]; then
    echo "healthcheck: neither sidecar-control nor sidecar-proxy is running" >&2
    return 1
  fi
  port=${addr##*:}
  host=${addr%:*}
  host=${host#[}
  host=${host%]}
  case "$host" in
    0.0.0.0 | "") host=127.0.0.1 ;;
    ::) host=::1 ;;
  esac
  exec 3<>"/dev/tcp/$host/$port" || return 1
  printf 'GET /health HTTP/1.0\r\nHost: %s\r\nConnection: close\r\n\r\n' "$host" >&3
  IFS= read -r -t 3 status <&3 || return 1
  exec 3<&-
  case "$status" in
    HTTP/1.?\ 200*) return 0 ;;
    *) echo "healthcheck: $host:$port/health answered: ${status%$'\r'}" >&2; return 1 ;;
  esac
}

role=${1:-help}
[ "$#" -gt 0 ] && shift
case "$role" in
  control) exec /usr/local/bin/sidecar-control "$@" ;;
  proxy) exec /usr/local/bin/sidecar-proxy "$@" ;;
  sidecarctl | ctl) exec /usr/local/bin/sidecarctl "$@" ;;
  gen-key) exec /usr/local/bin/sidecar-control gen-key "$@" ;;
  healthcheck) healthcheck ;;
  help | -h | --help) usage ;;
  *)
    echo "sidecar-entrypoint: unknown role '$role'" >&2
    usage >&2
    exit 2
    ;;
esac
