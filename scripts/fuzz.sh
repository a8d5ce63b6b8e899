#!/usr/bin/env bash
# Runs every go test -fuzz target in the repo for the given time each.
set -euo pipefail
cd "$(dirname "$0")/.."
t="${1:-30s}"
for pkg in $(go list ./...); do
  dir=$(go list -f '{{.Dir}}' "$pkg")
  for fz in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/^func //'); do
    echo "== $pkg $fz ($t)"
    go test "$pkg" -run '^$' -fuzz "^$fz\$" -fuzztime "$t" 2>&1 | grep -E 'elapsed|PASS|FAIL|ok' | tail -3
  done
done
