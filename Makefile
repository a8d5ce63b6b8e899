.PHONY: build test serve fuzz docs bench

build:
	scripts/install-deps.sh
	go build -o bin/pushctl ./cmd/pushctl

test:
	./scripts/test

serve:
	./scripts/pushctl serve

docs:
	go run ./cmd/gen-docs

# Each fuzz target for FUZZTIME (default 30s).
FUZZTIME ?= 30s
fuzz:
	scripts/fuzz.sh $(FUZZTIME)

bench:
	scripts/bench.sh
