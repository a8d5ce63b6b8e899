#!/usr/bin/env bash
# Durable versus in-memory publishing, in one run on this machine:
#   one streaming publisher (pub --lines, 200,000 messages),
#   16 concurrent HTTP publishers (pushctl bench, 20,000 messages),
#   and the restart time of a store retaining 1,000,000 messages.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
go build -o bin/pushctl ./cmd/pushctl
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT

serve() { # serve NAME ARGS... -> sets url
  bin/pushctl serve --listen 127.0.0.1:0 --log-level warn "${@:2}" 2> "$work/$1.log" &
  for _ in $(seq 200); do grep -q 'listening on' "$work/$1.log" 2>/dev/null && break; sleep 0.05; done
  url=$(grep -o 'http://[0-9.:]*' "$work/$1.log" | head -1)
}

for mode in memory durable; do
  args=(--history 1000000)
  [[ $mode == durable ]] && args+=(--data-dir "$work/data-$mode")
  serve "$mode" "${args[@]}"
  start=$(date +%s.%N)
  seq 1 200000 | bin/pushctl pub stream --lines -s "$url" 2>/dev/null
  end=$(date +%s.%N)
  awk -v m="$mode" -v s="$start" -v e="$end" 'BEGIN { printf "%-8s one streaming publisher: %.0f msgs/s\n", m, 200000 / (e - s) }'
  printf '%-8s 16 HTTP publishers:      ' "$mode"
  bin/pushctl bench -s "$url" --subscribers 1 --publishers 16 --messages 20000 --channel http 2>/dev/null | grep -o '[0-9]* publishes/s'
  kill %1; wait %1 2>/dev/null || true
done

serve fill --data-dir "$work/big" --history 1000000
seq 1 1000000 | bin/pushctl pub big --lines -s "$url" 2>/dev/null
kill %1; wait %1 2>/dev/null || true
serve reopen --data-dir "$work/big" --history 1000000
echo "restart with 1,000,000 retained: $(grep -o 'opened in [^ ]*' "$work/reopen.log")"
du -sh "$work/big" | awk '{print "store size: " $1}'
