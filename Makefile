# Sluice. `make run` starts a gateway on ./sluice-data; `make test` installs
# what the tests need (idempotently) and runs unit and integration tests.

SHELL     := /bin/bash
GO        ?= go
BIN       := bin/sluice
# The LD_PRELOAD shim (C; docs/SHIM.md), built beside the binary.
SHIM_LIB  := bin/libsluice-shim.so
SHIM_SRC  := $(wildcard shim/lib/*.c shim/lib/*.h)
SHIM_CC   ?= gcc
PKGS      := ./...
UNIT_PKGS := $(shell $(GO) list ./... 2>/dev/null | grep -v /test/integration)
APT_PKGS  := nbdkit libnbd-bin qemu-utils qemu-system-x86 qemu-system-common fio stress-ng e2fsprogs fuse3 python3 gcc libc6-dev sqlite3
FUZZTIME  ?= 30s
# staticcheck, pinned; `make tools` (run by `make vet`) installs it into
# bin/tools when it is missing or another version.
STATICCHECK_VERSION := v0.8.2
STATICCHECK         := $(CURDIR)/bin/tools/staticcheck

.PHONY: all build shim run test unit integration deps vet tools bench fuzz clean

all: build

# Static (no cgo): TestAttachKernelNBD runs it inside a busybox guest.
build: shim
	CGO_ENABLED=0 $(GO) build -o $(BIN) ./cmd/sluice

# The shim: C, no threads of its own, raw system calls; every exported
# symbol is an interposed libc entry point (-fvisibility=hidden).
# _FORTIFY_SOURCE is off: the library defines the functions whose inline
# fortified wrappers it would otherwise see.
shim: $(SHIM_LIB)

$(SHIM_LIB): $(SHIM_SRC)
	@mkdir -p $(dir $@)
	$(SHIM_CC) -O2 -fPIC -shared -Wall -Wextra -Werror -U_FORTIFY_SOURCE -fvisibility=hidden -o $@ shim/lib/channel.c shim/lib/request.c shim/lib/fdtable.c shim/lib/intercept.c

# A gateway on the embedded default: badger + a sparse pool file in ./sluice-data,
# tenants' encryption keys in ./sluice-keyring (created empty, mode 0600; add
# a line per tenant and `bin/sluice keyring reload`).
run: build
	@test -e sluice-keyring || (umask 077 && : > sluice-keyring)
	$(BIN) gateway --data-dir ./sluice-data --keyring ./sluice-keyring

# Tools the tests drive: real NBD clients and servers from Debian.
deps:
	@missing=""; for p in $(APT_PKGS); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	$(GO) mod download
	bash test/integration/guest-fetch.sh $${SLUICE_GUEST_CACHE:-/var/cache/sluice-test-guest}

vet: tools
	@test -z "$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))" || { gofmt -l .; echo "gofmt: files above need formatting"; exit 1; }
	$(GO) vet $(PKGS)
	$(STATICCHECK) $(PKGS)

tools:
	@$(STATICCHECK) -version 2>/dev/null | grep -qF '($(STATICCHECK_VERSION:v%=%))' || { \
		echo "installing staticcheck $(STATICCHECK_VERSION) into $(dir $(STATICCHECK))"; \
		rm -f $(STATICCHECK); GOBIN=$(dir $(STATICCHECK)) $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION); \
	}

unit:
	$(GO) test -race -count=1 $(UNIT_PKGS)

integration: build
	SLUICE_BIN=$(CURDIR)/$(BIN) $(GO) test -count=1 -timeout 30m -v ./test/integration/ 2>&1 | tee integration.log | grep -E '^(=== RUN|--- |PASS|FAIL|ok|panic)|_test.go'; exit $${PIPESTATUS[0]}

test: deps vet unit integration

# Fuzz each parser of untrusted bytes (NBD, filter records, chunk entries,
# the policy DSL, vhost-user messages, virtqueue descriptor chains, the
# shim's control messages and request records) for
# FUZZTIME.
fuzz:
	$(GO) test -run='^$$' -fuzz=FuzzOptions -fuzztime=$(FUZZTIME) ./nbd/
	$(GO) test -run='^$$' -fuzz=FuzzRequests -fuzztime=$(FUZZTIME) ./nbd/
	$(GO) test -run='^$$' -fuzz=FuzzTLSOptions -fuzztime=$(FUZZTIME) ./nbd/
	$(GO) test -run='^$$' -fuzz=FuzzRecordReader -fuzztime=$(FUZZTIME) ./nbd/
	$(GO) test -run='^$$' -fuzz=FuzzRecord -fuzztime=$(FUZZTIME) ./gateway/filter/
	$(GO) test -run='^$$' -fuzz=FuzzChunkEntry -fuzztime=$(FUZZTIME) ./gateway/store/
	$(GO) test -run='^$$' -fuzz=FuzzParse -fuzztime=$(FUZZTIME) ./policy/
	$(GO) test -run='^$$' -fuzz=FuzzMessage -fuzztime=$(FUZZTIME) ./virtio/
	$(GO) test -run='^$$' -fuzz=FuzzDescriptorChain -fuzztime=$(FUZZTIME) ./virtio/
	$(GO) test -run='^$$' -fuzz=FuzzNetlinkReply -fuzztime=$(FUZZTIME) ./attach/
	$(GO) test -run='^$$' -fuzz=FuzzControlMessage -fuzztime=$(FUZZTIME) ./shim/
	$(GO) test -run='^$$' -fuzz=FuzzRequest -fuzztime=$(FUZZTIME) ./shim/

bench: build deps
	bash bench/nbd.sh
	bash bench/qos.sh
	bash bench/filters.sh
	bash bench/filterab.sh
	bash bench/virtio.sh

clean:
	rm -rf bin integration.log
