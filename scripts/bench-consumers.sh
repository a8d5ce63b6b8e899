#!/usr/bin/env bash
# Acknowledged consume rate of durable consumers, in one run on this machine:
# N messages of 100 bytes are published first, then timed while consumed
# and acknowledged by 1 and by 3 `pushctl sub --durable` processes, on the
# memory broker and with --data-dir, and with redis-server on PATH on Redis
# (three serve nodes sharing one redis-server without persistence, each
# worker on its own node). With nats-server and nats on PATH
# (go install github.com/nats-io/nats-server/v2@v2.15.3 and
# github.com/nats-io/natscli/nats@v0.5.0), NATS JetStream the same way:
# `nats bench js pub async`, then `nats bench js consume --acks explicit`,
# memory and file storage (file with its default sync and with
# sync_interval: always, as --data-dir's --sync always).
# MODES (default "memory data-dir", redis added when redis-server is on
# PATH) and JS (default "memory file file-always") choose what is run.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-210000}
INFLIGHT=${INFLIGHT:-4000}
go build -o bin/pushctl ./cmd/pushctl
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null; rm -rf "$work"' EXIT

serve() { # serve NAME ARGS... -> sets url
  bin/pushctl serve --listen 127.0.0.1:0 --log-level warn "${@:2}" 2> "$work/$1.log" &
  for _ in $(seq 200); do grep -q 'listening on' "$work/$1.log" 2>/dev/null && break; sleep 0.05; done
  url=$(grep -o 'http://[0-9.:]*' "$work/$1.log" | head -1)
}

payload=$(head -c 100 /dev/zero | tr '\0' x)
awk -v n="$N" -v p="$payload" 'BEGIN { for (i = 1; i <= n; i++) print p }' > "$work/in"

if [[ -z ${MODES:-} ]] && command -v redis-server > /dev/null; then MODES="memory data-dir redis"; fi
read -ra modes <<< "${MODES:-memory data-dir}"
if [[ " ${modes[*]} " == *" redis "* ]]; then
  rport=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  redis-server --port "$rport" --save '' --appendonly no > "$work/redis.log" 2>&1 &
  redis_pid=$!
  for _ in $(seq 200); do grep -q 'Ready to accept' "$work/redis.log" && break; sleep 0.05; done
fi
for mode in "${modes[@]}"; do
  for workers in 1 3; do
    args=()
    [[ $mode == data-dir ]] && args+=(--data-dir "$work/data-$workers")
    [[ $mode == redis ]] && args+=(--broker "redis://127.0.0.1:$rport/$workers" --history $((N + 1000)))
    urls=()
    spids=()
    for i in $(seq "$([[ $mode == redis ]] && echo "$workers" || echo 1)"); do
      serve "$mode-$workers-$i" "${args[@]}"
      urls+=("$url")
      spids+=($!)
    done
    bin/pushctl consumers w --create bench --max-pending 10000000 -s "${urls[0]}" > /dev/null
    bin/pushctl pub bench --lines -s "${urls[0]}" < "$work/in" 2> /dev/null
    start=$(date +%s.%N)
    pids=()
    for i in $(seq 0 $((workers - 1))); do
      bin/pushctl sub bench --durable w --max-inflight "$INFLIGHT" --count $((N / workers)) -s "${urls[i % ${#urls[@]}]}" > /dev/null &
      pids+=($!)
    done
    wait "${pids[@]}"
    end=$(date +%s.%N)
    awk -v m="$mode" -v w="$workers" -v n="$N" -v s="$start" -v e="$end" \
      'BEGIN { printf "pushctl   %-9s %d consumer(s): %.0f msgs/s acknowledged\n", m, w, n / (e - s) }'
    kill "${spids[@]}"; wait "${spids[@]}" 2>/dev/null || true
  done
done
[[ -n ${redis_pid:-} ]] && { kill "$redis_pid"; wait "$redis_pid" 2>/dev/null || true; }

if ! command -v nats-server > /dev/null || ! command -v nats > /dev/null; then
  echo "nats-server or nats not on PATH: JetStream skipped"
  exit 0
fi
read -ra jss <<< "${JS-memory file file-always}"
for storage in "${jss[@]}"; do
  st=${storage%-always}
  conf="$work/$storage.conf"
  printf 'listen: 127.0.0.1:-1\njetstream { store_dir: "%s"%s }\n' "$work/js-$storage" \
    "$([[ $storage == file-always ]] && echo ', sync_interval: always')" > "$conf"
  nats-server -c "$conf" > "$work/$storage.nats.log" 2>&1 &
  for _ in $(seq 200); do grep -q 'Listening for client connections' "$work/$storage.nats.log" && break; sleep 0.05; done
  s=nats://$(grep -o 'client connections on [0-9.:]*' "$work/$storage.nats.log" | awk '{print $4}')
  for workers in 1 3; do
    nats -s "$s" bench js pub async --create --purge --storage "$st" --msgs "$N" --size 100 --no-progress bench.js > /dev/null 2>&1
    rate=$(nats -s "$s" bench js consume --acks explicit --msgs "$N" --clients "$workers" --size 100 --no-progress 2>&1 |
      grep -o 'stats: [0-9,]* msgs/sec' | grep -o '[0-9,]*' | tr -d ,)
    printf 'JetStream %-11s %d consumer(s): %s msgs/s acknowledged\n' "$storage" "$workers" "$rate"
    nats -s "$s" consumer rm benchstream nats-bench -f > /dev/null 2>&1 || true
  done
  kill %1; wait %1 2>/dev/null || true
done
