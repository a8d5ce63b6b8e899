#!/usr/bin/env bash
# Cluster figures for docs/cluster.md and the issue notes, in one run on this
# machine: one node in memory, one node on Redis, three nodes on one Redis.
#   scripts/bench-cluster.sh [--quick]
# For each: `pushctl bench` with SUBS WebSocket subscribers (spread over the
# nodes; publishers on the first node), flat out, then paced at 20 msgs/s for
# publish-to-delivery latency. Also Redis commands per publish (INFO
# commandstats). Installs redis-server when missing.
#
#   scripts/bench-cluster.sh --redis [--centrifugo BIN] [--pushctl BIN]
# The Redis table instead: two nodes on one redis-server (no persistence),
# publishers on node A, subscribers on node B, 100-byte messages:
# fan-out to 1000 WebSocket subscribers with 4 publishers as fast as
# acknowledged, the same at 20 messages/s, and 8 HTTP publishers with one
# subscriber; for each, redis-server CPU time per publish (utime+stime of
# /proc/PID/stat) and Redis commands per publish (INFO commandstats), both
# over the run's publishes (heartbeats included). With --centrifugo, the same
# loads on two Centrifugo nodes on the same redis-server (config from
# $CENTRIFUGO_CONFIG, else shared/bench/centrifugo-redis.json next to the
# checkout or its parent, with its ports and
# Redis address replaced; loopback only). --pushctl runs another pushctl
# binary as the nodes (a build of an older commit, to compare); the bench
# client is always this tree's.
#
# --pin (either mode) gives the bench client a CPU of its own (the last one)
# and runs the brokers and redis-server on the others (taskset), so that
# on a small machine the load generator, which does as much work per
# delivery as the broker, does not take the CPU the brokers are measured
# with. Both flavors are pinned the same way.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh --test >/dev/null
go build -o bin/pushctl ./cmd/pushctl
ulimit -n "$(ulimit -Hn)"

subs=3000; msgs=2000; paced=200
if [[ "${1:-}" == "--quick" ]]; then subs=300; msgs=200; paced=40; fi
mode=all; centrifugo=""; nodebin=bin/pushctl; pin=false
while [[ $# -gt 0 ]]; do
  case $1 in
    --redis) mode=redis ;;
    --centrifugo) centrifugo=$2; shift ;;
    --pushctl) nodebin=$2; shift ;;
    --pin) pin=true ;;
    --quick) ;;
    *) echo "usage: $0 [--quick] [--pin] | --redis [--centrifugo BIN] [--pushctl BIN] [--pin]" >&2; exit 2 ;;
  esac
  shift
done

# srv and cli prefix the brokers' and the bench client's commands.
srv=(); cli=()
if $pin; then
  ncpu=$(nproc)
  (( ncpu >= 2 )) || { echo "--pin needs at least 2 CPUs" >&2; exit 2; }
  command -v taskset >/dev/null || { echo "--pin needs taskset (util-linux)" >&2; exit 2; }
  srv=(taskset -c "0-$((ncpu - 2))"); cli=(taskset -c "$((ncpu - 1))")
  echo "== pinned: brokers and redis-server on CPUs 0-$((ncpu - 2)), the bench client on CPU $((ncpu - 1))"
fi

work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
${srv[@]+"${srv[@]}"} redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" > "$work/redis.log" & pids+=($!)
for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
redis="redis://127.0.0.1:$port/0"

# node VAR ARGS...: starts a broker and sets VAR to its URL.
node() {
  local var=$1; shift
  ${srv[@]+"${srv[@]}"} "$nodebin" serve --listen 127.0.0.1:0 --max-conns-per-ip 0 --log-level warn "$@" > /dev/null 2> "$work/$var.log" & pids+=($!)
  for _ in $(seq 100); do grep -q 'listening on' "$work/$var.log" 2>/dev/null && break; sleep 0.1; done
  printf -v "$var" '%s' "$(grep -o 'http://[0-9.:]*' "$work/$var.log" | head -1)"
}

run() { # LABEL PUBLISH-URL SUBSCRIBE-URLS
  local label=$1 pub=$2 to=$3
  echo "== $label: $subs WebSocket subscribers, $msgs messages flat out"
  ${cli[@]+"${cli[@]}"} bin/pushctl bench -s "$pub" --subscribe-to "$to" --subscribers "$subs" --messages "$msgs" --publishers 8 --channel "flat$RANDOM"
  echo "== $label: $subs WebSocket subscribers, $paced messages at 20/s"
  ${cli[@]+"${cli[@]}"} bin/pushctl bench -s "$pub" --subscribe-to "$to" --subscribers "$subs" --messages "$paced" --rate 20 --channel "paced$RANDOM"
}

if [[ $mode == redis ]]; then
  rpid=$(redis-cli -p "$port" info server | tr -d '\r' | awk -F: '$1 == "process_id" {print $2}')
  # load LABEL FLAVOR PUB SUB BENCH-ARGS...: one bench run, then a line with
  # its figures and Redis's cost per publish (while publishing and
  # delivering: heartbeats included, subscribing not).
  load() {
    local label=$1 flavor=$2 pub=$3 sub=$4; shift 4
    ${cli[@]+"${cli[@]}"} bin/pushctl bench --flavor "$flavor" -s "$pub" --subscribe-to "$sub" --size 100 --format json \
      --cost-pid "$rpid" --redis-stats "$redis" "$@" > "$work/r.json"
    python3 - "$label" "$work/r.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[2]))["results"][0]
print(f"{sys.argv[1]}: {r['deliveries_per_sec']:,.0f} deliveries/s, {r['publishes_per_sec']:,.0f} publishes/s, "
      f"p50 {r['p50_ns']/1e6:.1f} ms, p99 {r['p99_ns']/1e6:.1f} ms, lost {r['lost']}, errors {r['publish_errors']}; "
      f"redis-server CPU {r.get('cost_cpu_per_publish_ns', 0)/1e3:.1f} us/publish, "
      f"{r.get('redis_commands_per_publish', 0):.2f} commands/publish ({r['published']} publishes)")
PY
  }
  table() { # FLAVOR A B
    load "$1 fan-out, 1000 ws subscribers on B, 4 publishers on A" "$1" "$2" "$3" --subscribers 1000 --publishers 4 --messages 10000
    load "$1 1000 ws subscribers on B, 20 messages/s" "$1" "$2" "$3" --subscribers 1000 --publishers 1 --messages 200 --rate 20
    load "$1 8 HTTP publishers on A, 1 subscriber on B" "$1" "$2" "$3" --subscribers 1 --publishers 8 --messages 40000
  }
  node a --broker "$redis"; node b --broker "$redis"
  table pushctl "$a" "$b"
  if [[ -n $centrifugo ]]; then
    kill "${pids[@]:1}" 2>/dev/null || true
    conf=${CENTRIFUGO_CONFIG:-}
    for f in ../shared/bench/centrifugo-redis.json ../../shared/bench/centrifugo-redis.json; do
      [[ -z $conf && -f $f ]] && conf=$f
    done
    [[ -n $conf ]] || { echo "no Centrifugo config: set CENTRIFUGO_CONFIG" >&2; exit 1; }
    for v in ca cb; do
      cport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
      python3 - "$conf" "$cport" "$port" > "$work/$v.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
c.setdefault("http_server", {}).update({"address": "127.0.0.1", "port": int(sys.argv[2])})
c["engine"]["redis"]["address"] = [f"redis://127.0.0.1:{sys.argv[3]}"]
print(json.dumps(c))
PY
      ${srv[@]+"${srv[@]}"} "$centrifugo" --config "$work/$v.json" > "$work/$v.log" 2>&1 & pids+=($!)
      for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$cport/health" && break; sleep 0.1; done
      printf -v "$v" 'http://127.0.0.1:%s' "$cport"
    done
    table centrifugo "$ca" "$cb"
  fi
  exit 0
fi

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
