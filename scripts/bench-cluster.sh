#!/usr/bin/env bash
# Cluster figures for docs/cluster.md and the issue notes, in one run on this
# machine: one node in memory, one node on Redis, three nodes on one Redis.
#   scripts/bench-cluster.sh [--quick]
# For each: `pushctl bench` with SUBS WebSocket subscribers (spread over the
# nodes; publishers on the first node), flat out, then paced at 20 msgs/s for
# publish-to-delivery latency. Also Redis commands per publish (INFO
# commandstats). Installs redis-server when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh --test >/dev/null
go build -o bin/pushctl ./cmd/pushctl
ulimit -n "$(ulimit -Hn)"

subs=3000; msgs=2000; paced=200
if [[ "${1:-}" == "--quick" ]]; then subs=300; msgs=200; paced=40; fi

work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" > "$work/redis.log" & pids+=($!)
for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
redis="redis://127.0.0.1:$port/0"

# node VAR ARGS...: starts a broker and sets VAR to its URL.
node() {
  local var=$1; shift
  bin/pushctl serve --listen 127.0.0.1:0 --max-conns-per-ip 0 --log-level warn "$@" > /dev/null 2> "$work/$var.log" & pids+=($!)
  for _ in $(seq 100); do grep -q 'listening on' "$work/$var.log" 2>/dev/null && break; sleep 0.1; done
  printf -v "$var" '%s' "$(grep -o 'http://[0-9.:]*' "$work/$var.log" | head -1)"
}

run() { # LABEL PUBLISH-URL SUBSCRIBE-URLS
  local label=$1 pub=$2 to=$3
  echo "== $label: $subs WebSocket subscribers, $msgs messages flat out"
  bin/pushctl bench -s "$pub" --subscribe-to "$to" --subscribers "$subs" --messages "$msgs" --publishers 8 --channel "flat$RANDOM"
  echo "== $label: $subs WebSocket subscribers, $paced messages at 20/s"
  bin/pushctl bench -s "$pub" --subscribe-to "$to" --subscribers "$subs" --messages "$paced" --rate 20 --channel "paced$RANDOM"
}

node mem
run "1 node, memory" "$mem" "$mem"
node one --broker "$redis"
run "1 node, Redis" "$one" "$one"
node b --broker "$redis"; node c --broker "$redis"
run "3 nodes, Redis (publish on A, subscribers on A, B, C)" "$one" "$one,$b,$c"
run "3 nodes, Redis (publish on A, subscribers on B and C only: cross-node)" "$one" "$b,$c"

redis-cli -p "$port" config resetstat >/dev/null
bin/pushctl bench -s "$one" --subscribe-to "$b,$c" --subscribers 1000 --messages 1000 --publishers 1 --channel cost >/dev/null
calls=$(redis-cli -p "$port" info commandstats | tr -d '\r' | awk -F'[:=,]' '/^cmdstat_/ && $1 != "cmdstat_info" && $1 !~ /config/ {s += $3} END {print s}')
echo "== Redis commands over 1000 publishes to 1000 subscribers on 2 nodes (heartbeats and subscribes included): $calls"
