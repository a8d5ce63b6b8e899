#!/usr/bin/env bash
# Side-by-side benchmark of pushctl and nchan on this machine, in one run.
#   scripts/bench.sh [--quick]
# Installs nginx-light and libnginx-mod-nchan when missing, starts nchan with
# ../shared/bench/nchan.conf (or $NCHAN_CONF) and a pushctl broker, then runs
# `pushctl bench` against both: 1,000 WebSocket subscribers, 1,000 SSE
# subscribers (one channel, HTTP publishes of 100-byte messages), and the
# memory of 10,000 idle WebSocket connections. Then ZeroMQ: the raw pebbe/zmq4
# PUB->SUB ceiling and broker ingest (Go benchmarks), ZeroMQ ingest with one
# WebSocket subscriber and with 1,000. Results: text on stdout, CSV in
# bench-results.csv.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
scripts/install-deps.sh --bench
go build -o bin/pushctl ./cmd/pushctl
ulimit -n "$(ulimit -Hn)"  # 10,000 connections need that many descriptors on each side

subs=1000; msgs=2000; idle=10000
if [[ "${1:-}" == "--quick" ]]; then subs=100; msgs=200; idle=1000; fi

conf="${NCHAN_CONF:-$repo/../shared/bench/nchan.conf}"
work=$(mktemp -d)
mkdir -p /tmp/nchan
nginx -c "$(realpath "$conf")" & nchan_pid=$!
bin/pushctl serve --listen 127.0.0.1:0 --zmq-in tcp://127.0.0.1:17071 --max-conns-per-ip 0 --log-level warn 2> "$work/serve.log" & serve_pid=$!
trap 'kill $nchan_pid $serve_pid 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT

for _ in $(seq 100); do
  grep -q 'listening on' "$work/serve.log" 2>/dev/null && curl -sf -o /dev/null -d x http://127.0.0.1:18080/pub/ping && break
  sleep 0.1
done
pushctl_url=$(grep -o 'http://[0-9.:]*' "$work/serve.log" | head -1)
echo "pushctl $(bin/pushctl version | head -1 | cut -d' ' -f2) at $pushctl_url; nchan at http://127.0.0.1:18080"

out=bench-results.csv
: > "$out"
header=1
for transport in ws sse; do
  for flavor in pushctl nchan; do
    url=$pushctl_url; [[ $flavor == nchan ]] && url=http://127.0.0.1:18080
    ch="b${transport}${RANDOM}"
    bin/pushctl bench --server "$url" --flavor "$flavor" --transport "$transport" \
      --subscribers "$subs" --publishers 4 --messages "$msgs" --size 100 --channel "$ch" 2>/dev/null
    bin/pushctl bench --server "$url" --flavor "$flavor" --transport "$transport" \
      --subscribers "$subs" --publishers 4 --messages "$msgs" --size 100 --channel "${ch}c" --format csv 2>/dev/null \
      | if [[ $header == 1 ]]; then cat; else tail -n +2; fi >> "$out"
    header=0
  done
done

nginx_pids=$(pgrep -d, -f "nginx.*$(basename "$conf")|nginx: worker" || true)
echo "idle connections:"
# A fresh broker, so garbage from the runs above does not blur its memory.
bin/pushctl serve --listen 127.0.0.1:0 --max-conns-per-ip 0 --log-level warn 2> "$work/idle.log" & idle_pid=$!
for _ in $(seq 100); do grep -q 'listening on' "$work/idle.log" 2>/dev/null && break; sleep 0.1; done
idle_url=$(grep -o 'http://[0-9.:]*' "$work/idle.log" | head -1)
echo -n "  pushctl: "; bin/pushctl bench --server "$idle_url" --idle "$idle" --pid "$idle_pid" --channel idle 2>/dev/null
kill $idle_pid
echo -n "  nchan:   "; bin/pushctl bench --server http://127.0.0.1:18080 --idle "$idle" --pid "$nginx_pids" --channel idle 2>/dev/null
echo "ZeroMQ (Go benchmarks: raw libzmq ceiling, then ingest into the broker):"
go test ./internal/zmq -run '^$' -bench . -benchtime 300000x | grep -E '^Benchmark'
zmsgs=200000; zsubs=1000; zrate=1000; zn=5000
if [[ "${1:-}" == "--quick" ]]; then zmsgs=20000; zsubs=100; zn=500; fi
echo "ZeroMQ ingest, 1 WebSocket subscriber, as fast as possible and paced at 100k/s:"
bin/pushctl bench --server "$pushctl_url" --subscribers 1 --messages "$zmsgs" --publish-zmq tcp://127.0.0.1:17071 --channel zq1 2>/dev/null
bin/pushctl bench --server "$pushctl_url" --subscribers 1 --messages "$zmsgs" --rate 100000 --publish-zmq tcp://127.0.0.1:17071 --channel zq2 2>/dev/null
echo "ZeroMQ ingest to $zsubs WebSocket subscribers, paced at $zrate/s:"
bin/pushctl bench --server "$pushctl_url" --subscribers "$zsubs" --messages "$zn" --rate "$zrate" --publish-zmq tcp://127.0.0.1:17071 --channel zq3 2>/dev/null
echo "CSV: $out"
