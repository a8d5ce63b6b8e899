#!/usr/bin/env bash
# Side-by-side benchmark of pushctl and nchan on this machine, in one run.
#   scripts/bench.sh [--quick]
# Installs nginx-light and libnginx-mod-nchan when missing, starts nchan with
# ../shared/bench/nchan.conf (or $NCHAN_CONF) and a pushctl broker, then runs
# `pushctl bench --against` on both: 1,000 WebSocket and 1,000 SSE subscribers
# with 8 HTTP publishers, 1,000 WebSocket subscribers paced at 20 messages/s,
# HTTP publishing to 1 subscriber; streaming publishers (NDJSON, WebSocket)
# into pushctl; the memory of 10,000 idle WebSocket and SSE connections (fresh
# processes). Then ZeroMQ: the raw pebbe/zmq4
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
# Each load runs against pushctl, then the same against nchan, printed with
# the ratio (pushctl bench --against).
side_by_side() {
  echo "\$ pushctl bench $*"
  bin/pushctl bench --server "$pushctl_url" --against http://127.0.0.1:18080 --against-flavor nchan "$@" 2>/dev/null
  bin/pushctl bench --server "$pushctl_url" --against http://127.0.0.1:18080 --against-flavor nchan "$@" --format csv 2>/dev/null \
    | if [[ -s "$out" ]]; then tail -n +2; else cat; fi >> "$out"
}
side_by_side --transport ws --subscribers "$subs" --publishers 8 --messages "$msgs"
side_by_side --transport sse --subscribers "$subs" --publishers 8 --messages "$msgs"
side_by_side --transport ws --subscribers "$subs" --publishers 1 --rate 20 --messages 200
side_by_side --transport ws --subscribers 1 --publishers 8 --messages $((msgs * 25))
echo "streaming publishers into pushctl, 1 subscriber:"
for over in ndjson ws; do
  bin/pushctl bench --server "$pushctl_url" --subscribers 1 --publishers 1 --publish-over "$over" --messages $((msgs * 150)) 2>/dev/null
done

echo "idle connections (fresh processes, so garbage from the runs above does not blur their memory):"
kill $nchan_pid; wait $nchan_pid 2>/dev/null || true
for transport in ws sse; do
  bin/pushctl serve --listen 127.0.0.1:0 --max-conns-per-ip 0 --log-level warn 2> "$work/idle.log" & idle_pid=$!
  for _ in $(seq 100); do grep -q 'listening on' "$work/idle.log" 2>/dev/null && break; sleep 0.1; done
  idle_url=$(grep -o 'http://[0-9.:]*' "$work/idle.log" | head -1)
  echo -n "  pushctl: "; bin/pushctl bench --server "$idle_url" --idle "$idle" --transport "$transport" --pid "$idle_pid" --channel idle 2>/dev/null
  kill $idle_pid
  nginx -c "$(realpath "$conf")" & nchan_pid=$!
  for _ in $(seq 100); do curl -sf -o /dev/null -d x http://127.0.0.1:18080/pub/ping && break; sleep 0.1; done
  nginx_pids=$(pgrep -d, -f "nginx" || true)
  echo -n "  nchan:   "; bin/pushctl bench --server http://127.0.0.1:18080 --idle "$idle" --transport "$transport" --pid "$nginx_pids" --channel idle 2>/dev/null
  kill $nchan_pid; wait $nchan_pid 2>/dev/null || true
done
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
