#!/usr/bin/env bash
# Instructions redis-server executes per publish, counted by callgrind:
# unlike CPU time, the count does not move with the machine's load, so two
# versions of the publish script can be compared on a busy machine.
#   scripts/redis-cost.sh [one-at-a-time|streamed] [N]
# Runs BenchmarkRedisPublish/MODE (./internal/broker/redislog) twice, with
# N and 2N publishes, against a redis-server under valgrind, and prints
# the difference over N: the cost of one publish, warm-up and heartbeats
# of equal length cancelled out (heartbeats differ a little with the run's
# length: a few hundred instructions per publish). Then the same split by
# the Redis commands the script calls (inclusive, per publish).
# REDIS_COST_KEEP=DIR keeps callgrind's files there (callgrind_annotate
# --tree=calling DIR/2N.out shows who calls what).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-one-at-a-time}; n=${2:-1000}
command -v valgrind >/dev/null || { echo "redis-cost: needs valgrind (scripts/install-deps.sh --bench installs it)" >&2; exit 1; }
command -v redis-server >/dev/null || scripts/install-deps.sh --test >/dev/null
work=$(mktemp -d)
trap 'if [[ -n "${REDIS_COST_KEEP:-}" ]]; then mkdir -p "$REDIS_COST_KEEP"; cp "$work"/*.out "$REDIS_COST_KEEP"/; fi; rm -rf "$work"' EXIT
go test -c -o "$work/redislog.test" ./internal/broker/redislog/

# count N: runs N publishes against redis-server under callgrind; the
# inclusive instruction counts go to $work/N.txt.
count() {
  local n=$1 port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  valgrind --tool=callgrind --callgrind-out-file="$work/$n.out" \
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" > "$work/$n.log" 2>&1 &
  local vg=$!
  for _ in $(seq 600); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
  PUSHCTL_COST_REDIS=127.0.0.1:$port "$work/redislog.test" -test.run '^$' \
    -test.bench "BenchmarkRedisPublish/$mode\$" -test.benchtime "${n}x" > "$work/$n.bench"
  redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
  wait "$vg" || true
  callgrind_annotate --inclusive=yes --threshold=100 "$work/$n.out" > "$work/$n.txt" 2>/dev/null
}
count "$n"
count "$((2 * n))"

# ir FILE FUNCTION: the inclusive instructions of FUNCTION (0 if absent).
ir() { awk -v f="$2" '$0 ~ ":"f" \\[" {gsub(",","",$1); print $1; exit}' "$1" | grep . || echo 0; }
total() { awk '/PROGRAM TOTALS/ {gsub(",","",$1); print $1; exit}' "$1"; }
per() { echo $(( ($2 - $1) / n )); }
echo "redis-server instructions per publish ($mode, $n vs $((2 * n)) publishes):"
printf '  %-22s %9s\n' all "$(per "$(total "$work/$n.txt")" "$(total "$work/$((2 * n)).txt")")"
for f in evalShaCommand lua_pcall scriptCall parseReply xaddCommand streamTrim xrangeCommand xlenCommand \
  hmgetCommand hsetCommand hgetCommand hgetallCommand publishCommand spublishCommand; do
  printf '  %-22s %9s\n' "$f" "$(per "$(ir "$work/$n.txt" "$f")" "$(ir "$work/$((2 * n)).txt" "$f")")"
done
