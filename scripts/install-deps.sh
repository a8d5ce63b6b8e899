#!/usr/bin/env bash
# Installs the system packages pushctl needs to build and test, only when missing.
#   scripts/install-deps.sh          build deps (libzmq3-dev, pkg-config)
#   scripts/install-deps.sh --test   build + test deps (pyzmq, redis-server, tmux, chromium,
#                                    Node.js and the npm packages pinned in testdata/pusher-js and
#                                    testdata/durable-streams)
#   scripts/install-deps.sh --bench  nginx with nchan (scripts/bench.sh), valgrind (scripts/redis-cost.sh)
set -euo pipefail

pkgs=(gcc libc6-dev libzmq3-dev pkg-config)
if [[ "${1:-}" == "--test" ]]; then
  pkgs+=(python3-zmq tmux unzip curl chromium redis-server redis-tools)
  # Any Node.js with npm will do; Debian's when there is none.
  if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    pkgs+=(nodejs npm)
  fi
fi
if [[ "${1:-}" == "--bench" ]]; then
  pkgs+=(nginx-light libnginx-mod-nchan valgrind)
fi

missing=()
for p in "${pkgs[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
npm_packages() {
  # pusher-js and the Durable Streams conformance suite for the tests,
  # exactly as their lock files pin them.
  [[ "${1:-}" == "--test" ]] || return 0
  local dir name
  for name in pusher-js durable-streams; do
    dir="$(cd "$(dirname "$0")/.." && pwd)/testdata/$name"
    if [[ ! -f "$dir/node_modules/.package-lock.json" || "$dir/package-lock.json" -nt "$dir/node_modules/.package-lock.json" ]]; then
      echo "install-deps: npm ci in testdata/$name" >&2
      (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >&2)
    fi
  done
}

if [[ ${#missing[@]} -eq 0 ]]; then
  npm_packages "${1:-}"
  exit 0
fi

sudo=""
if [[ $(id -u) -ne 0 ]]; then
  if command -v sudo >/dev/null; then sudo="sudo"; else
    echo "install-deps: need root to install: ${missing[*]}" >&2; exit 1
  fi
fi
echo "install-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq >&2
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
npm_packages "${1:-}"
