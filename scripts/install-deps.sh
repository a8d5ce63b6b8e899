#!/usr/bin/env bash
# Installs the system packages pushctl needs to build and test, only when missing.
#   scripts/install-deps.sh          build deps (libzmq3-dev, pkg-config)
#   scripts/install-deps.sh --test   build + test deps (pyzmq, redis-server, tmux, chromium)
set -euo pipefail

pkgs=(gcc libc6-dev libzmq3-dev pkg-config)
if [[ "${1:-}" == "--test" ]]; then
  pkgs+=(python3-zmq tmux unzip chromium redis-server redis-tools)
fi
if [[ "${1:-}" == "--bench" ]]; then
  pkgs+=(nginx-light libnginx-mod-nchan)
fi

missing=()
for p in "${pkgs[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

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
