# reachd — run `make help` for the targets.
GO      ?= go
BIN     ?= bin/reachd
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X reachd/pkg/cli.Version=$(VERSION)

.PHONY: help build generate check-generated test test-unit test-lab demo bench lint fuzz install clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

# Without cgo: one static binary, and the daemon can drop capabilities on every thread
# (syscall.AllThreadsSyscall refuses under cgo).
build: ## build bin/reachd
	CGO_ENABLED=0 $(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/reachd

generate: ## regenerate the eBPF objects and Go bindings (needs clang, llvm-strip)
	$(GO) generate ./...

check-generated: generate ## fail if the committed eBPF objects are not what the sources give
	@git diff --exit-code --stat -- pkg/wire || { echo "generated eBPF objects are stale: run 'make generate' and commit"; exit 1; }
	@test -z "$$(git status --porcelain -- pkg/wire)" || { git status --porcelain -- pkg/wire; echo "untracked generated files"; exit 1; }

test: test-unit test-lab ## all tests (lab tests need root; with CI=true a skip fails)

FUZZTIME ?= 60s
# make test fuzzes each target for an execution count, not a duration: Go 1.26 can fail a
# duration run at its very end with no finding (golang/go#75804); tests/fuzz.sh explains.
FUZZCOUNT ?= 20000x
# Every fuzz target that reads bytes from the network or the user: package and name.
FUZZ_TARGETS := resolv:FuzzParseConf resolv:FuzzParseHosts probe:FuzzParseExtendedErr probe:FuzzParseICMP probe:FuzzParseQuotedEcho \
	probe:FuzzRxControl probe:FuzzReplyChecks probe:FuzzDNSAnswer target:FuzzParseHostPort wire:FuzzTCParser \
	config:FuzzParse

test-unit: ## unit tests, no root needed, and a short run of every fuzz target
	$(GO) test -count=1 -skip 'Bench' ./pkg/... ./cmd/... ./internal/... ./tests/
	@GO=$(GO) tests/fuzz.sh $(FUZZCOUNT) $(FUZZ_TARGETS)

test-lab: build ## namespace lab tests (root)
	@if [ -d tests/lab ] && ls tests/lab/*_test.go >/dev/null 2>&1; then \
		REACHD_BIN=$(CURDIR)/$(BIN) $(GO) test -count=1 -v -timeout 10m -skip 'Bench' ./tests/lab/... ; \
	else echo "test-lab: no lab tests yet"; fi

demo: build ## build reachd and show verdicts against a throwaway lab (root)
	$(GO) run ./tests/lab/demo -reachd $(CURDIR)/$(BIN)

bench: build ## benchmarks: TC per-packet cost, one-shot runs, the daemon beside fping and blackbox_exporter, a 10-minute 10,000-target soak (root)
	REACHD_BENCH=1 $(GO) test -count=1 -v -run 'Bench' ./pkg/wire/ | grep -E '^(BENCH|ok|FAIL|---)'
	REACHD_BENCH=1 REACHD_BIN=$(CURDIR)/$(BIN) $(GO) test -count=1 -v -run 'Bench' -timeout 45m ./tests/lab/

fuzz: ## fuzz every byte parser for FUZZTIME each (default 60s; make test runs FUZZCOUNT execs each)
	@GO=$(GO) tests/fuzz.sh $(FUZZTIME) $(FUZZ_TARGETS)

lint: ## gofmt and go vet
	@test -z "$$(gofmt -l .)" || { gofmt -l .; echo "gofmt needed"; exit 1; }
	$(GO) vet ./...

PREFIX  ?= /usr/local
DESTDIR ?=
install: build ## install the binary, the systemd unit and an example config (root)
	install -D -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/bin/reachd
	install -d $(DESTDIR)/etc/systemd/system
	sed 's|/usr/local/bin/reachd|$(PREFIX)/bin/reachd|; s|/usr/local/share/doc|$(PREFIX)/share/doc|' systemd/reachd.service > $(DESTDIR)/etc/systemd/system/reachd.service
	install -D -m 0644 systemd/reachd.yaml $(DESTDIR)/etc/reachd/reachd.yaml.example
	install -D -m 0644 -t $(DESTDIR)$(PREFIX)/share/doc/reachd docs/daemon.md docs/config.md docs/fleet.md docs/verdict.md docs/alerts.yml
	@echo "installed. Without /etc/reachd/reachd.yaml reachd probes this host's gateways and nameservers;"
	@echo "copy /etc/reachd/reachd.yaml.example there to probe your own targets, then:"
	@echo "  systemctl daemon-reload && systemctl enable --now reachd"

clean: ## remove build output
	rm -rf bin
