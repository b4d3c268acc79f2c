# switchboard: `make demo` runs it, `make test` tests it.
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)
GO ?= go
export CGO_ENABLED ?= 0

.PHONY: build release test test-deps lint unit e2e fuzz demo bench bench-smoke clean

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/switchboard ./cmd/switchboard

# Static binaries for linux amd64, arm64, armv6, armv7 and mipsle in dist/.
release:
	./scripts/release.sh $(VERSION)

test-deps:
	./scripts/test-deps.sh

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' ':!third_party')); if [ -n "$$out" ]; then echo "gofmt needed: $$out"; exit 1; fi
	./scripts/x-crypto.sh --check
	$(GO) vet ./...
	$(GO) tool staticcheck ./...

# -race needs cgo.
unit:
	CGO_ENABLED=1 $(GO) test -race -count=1 $$($(GO) list ./... | grep -v /e2e)
	cd third_party/golang.org/x/crypto && $(GO) test -count=1 ./ssh/...

e2e: test-deps
	$(GO) test -count=1 -timeout 15m ./e2e/

test: test-deps lint unit e2e bench-smoke

# Each fuzz target for FUZZTIME; new finds land in the build cache, crashers
# in testdata/fuzz (commit them as regression seeds).
FUZZTIME ?= 30s
fuzz:
	$(GO) test ./internal/sshd/ -run '^$$' -fuzz FuzzParsePayloads -fuzztime $(FUZZTIME)
	$(GO) test ./internal/agent/ -run '^$$' -fuzz FuzzParseForward -fuzztime $(FUZZTIME)
	$(GO) test ./internal/enroll/ -run '^$$' -fuzz FuzzRewrite -fuzztime $(FUZZTIME)
	$(GO) test ./internal/wake/ -run '^$$' -fuzz FuzzParse -fuzztime $(FUZZTIME)
	$(GO) test ./internal/broker/ -run '^$$' -fuzz FuzzACL -fuzztime $(FUZZTIME)
	@for f in $$($(GO) test ./internal/policy/ -list 'Fuzz.*' | grep ^Fuzz); do \
	  $(GO) test ./internal/policy/ -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) || exit 1; done

# make demo ARGS=--interactive leaves the lab up.
demo: build
	./scripts/demo.sh $(ARGS)

# Every benchmark program, one after the other (~15 min), into docs/benchmarks.md
# and docs/bench/*.png, with the targets met or missed.
bench: build test-deps
	$(GO) run ./bench/report -switchboard bin/switchboard -out docs/benchmarks.md

# The same programs at tiny sizes (< 2 min): fails if one fails, a figure is
# missing, a circuit errs or devices fail to connect. Part of make test.
bench-smoke: build test-deps
	$(GO) run ./bench/report -switchboard bin/switchboard -smoke

clean:
	rm -rf bin dist
