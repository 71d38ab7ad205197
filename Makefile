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
APT_PKGS  := nbdkit libnbd-bin qemu-utils qemu-system-x86 qemu-system-common fio stress-ng e2fsprogs fuse3 python3 gcc libc6-dev sqlite3 postgresql-15 rocksdb-tools systemd
FUZZTIME  ?= 30s
# SPDK for the SPDK device's tests (docs/SPDK.md). Debian has no SPDK
# package: `make deps` unpacks the build in ../shared/spdk into SPDK_DIR
# (tests look there unless SPDK_DIR says otherwise) and installs the Debian
# libraries it runs on (DPDK 22.11's among them).
SPDK_VERSION  := v23.01.1
SPDK_TARBALL_NAME := spdk-$(SPDK_VERSION)-debian12-x86_64.tar.xz
# The first of: beside the checkout (../shared/spdk), the workspace's shared
# folder (a clone elsewhere, as CI's), the checkout's parent's parent.
SPDK_TARBALL  ?= $(firstword $(wildcard $(abspath $(CURDIR)/../shared/spdk/$(SPDK_TARBALL_NAME)) \
                   /work/shared/spdk/$(SPDK_TARBALL_NAME) \
                   $(abspath $(CURDIR)/../../shared/spdk/$(SPDK_TARBALL_NAME))) \
                   $(abspath $(CURDIR)/../shared/spdk/$(SPDK_TARBALL_NAME)))
SPDK_DIR      ?= /opt/sluice-spdk/$(SPDK_VERSION)
SPDK_APT_PKGS := xz-utils libaio1 libbsd0 libfdt1 libmd0 libnuma1 libssl3 libuuid1 \
	librte-bus-pci23 librte-cryptodev23 librte-dmadev23 librte-eal23 librte-ethdev23 \
	librte-hash23 librte-kvargs23 librte-mbuf23 librte-mempool-ring23 librte-mempool23 \
	librte-meter23 librte-net23 librte-pci23 librte-power23 librte-rcu23 librte-ring23 \
	librte-telemetry23 librte-timer23 librte-vhost23
# staticcheck, pinned; `make tools` (run by `make vet`) installs it into
# bin/tools when it is missing or another version.
STATICCHECK_VERSION := v0.8.2
STATICCHECK         := $(CURDIR)/bin/tools/staticcheck

.PHONY: all build shim run test unit integration deps deps-spdk vet tools bench fuzz clean

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

# Tools the tests drive: real NBD clients and servers from Debian, and SPDK.
deps:
	@missing=""; for p in $(APT_PKGS) $(SPDK_APT_PKGS); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	$(GO) mod download
	bash test/integration/guest-fetch.sh $${SLUICE_GUEST_CACHE:-/var/cache/sluice-test-guest}
	@$(MAKE) --no-print-directory deps-spdk

# Unpack SPDK into SPDK_DIR unless the same tarball already is (its sha256
# is kept beside it). It is unpacked beside SPDK_DIR and renamed into place,
# so an interrupted run leaves no half-unpacked tree behind.
deps-spdk:
	@if [ ! -f "$(SPDK_TARBALL)" ]; then \
		if [ -x "$(SPDK_DIR)/bin/vhost" ]; then exit 0; fi; \
		echo "SPDK: no $(SPDK_TARBALL) and nothing in $(SPDK_DIR); SPDK tests will skip (and fail under CI=true)"; exit 0; \
	fi; \
	sum=$$(sha256sum < "$(SPDK_TARBALL)" | cut -d' ' -f1); \
	if [ -x "$(SPDK_DIR)/bin/vhost" ] && [ "$$(cat "$(SPDK_DIR)/.tarball-sha256" 2>/dev/null)" = "$$sum" ]; then exit 0; fi; \
	echo "unpacking SPDK $(SPDK_VERSION) into $(SPDK_DIR)"; \
	mkdir -p "$(dir $(SPDK_DIR))" && tmp=$$(mktemp -d "$(dir $(SPDK_DIR)).unpack.XXXXXX") && \
	tar xJf "$(SPDK_TARBALL)" -C "$$tmp" && echo "$$sum" > "$$tmp/spdk-$(SPDK_VERSION)/.tarball-sha256" && \
	rm -rf "$(SPDK_DIR)" && mv "$$tmp/spdk-$(SPDK_VERSION)" "$(SPDK_DIR)" && rm -rf "$$tmp"

vet: tools
	@test -z "$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))" || { gofmt -l .; echo "gofmt: files above need formatting"; exit 1; }
	$(GO) vet $(PKGS)
	$(STATICCHECK) $(PKGS)

tools:
	@$(STATICCHECK) -version 2>/dev/null | grep -qF '($(STATICCHECK_VERSION:v%=%))' || { \
		echo "installing staticcheck $(STATICCHECK_VERSION) into $(dir $(STATICCHECK))"; \
		rm -f $(STATICCHECK); GOBIN=$(dir $(STATICCHECK)) $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION); \
	}

# The packages whose tests start an SPDK target run one at a time: each
# reserves huge pages for its target and gives them back when done, which
# takes free pages from under another package's target.
SPDK_UNIT_PKGS := $(filter %/spdkbackend %/spdkbackend/rpc %/virtio,$(UNIT_PKGS))
# The controller's 1,000-gateway simulation runs without the race detector
# (it skips itself under -race: ten times slower).
unit:
	SPDK_DIR=$(SPDK_DIR) $(GO) test -race -count=1 $(filter-out $(SPDK_UNIT_PKGS),$(UNIT_PKGS))
	SPDK_DIR=$(SPDK_DIR) $(GO) test -race -count=1 -p 1 $(SPDK_UNIT_PKGS)
	$(GO) test -count=1 -run TestSimulation1000 ./controller/

integration: build
	SPDK_DIR=$(SPDK_DIR) SLUICE_BIN=$(CURDIR)/$(BIN) $(GO) test -count=1 -timeout 30m -v ./test/integration/ 2>&1 | tee integration.log | grep -E '^(=== RUN|--- |PASS|FAIL|ok|panic)|_test.go'; exit $${PIPESTATUS[0]}

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
	$(GO) test -run='^$$' -fuzz=FuzzPendingRecord -fuzztime=$(FUZZTIME) ./gateway/store/
	$(GO) test -run='^$$' -fuzz=FuzzParse -fuzztime=$(FUZZTIME) ./policy/
	$(GO) test -run='^$$' -fuzz=FuzzMessage -fuzztime=$(FUZZTIME) ./virtio/
	$(GO) test -run='^$$' -fuzz=FuzzDescriptorChain -fuzztime=$(FUZZTIME) ./virtio/
	$(GO) test -run='^$$' -fuzz=FuzzInflightRecover -fuzztime=$(FUZZTIME) ./virtio/
	$(GO) test -run='^$$' -fuzz=FuzzNetlinkReply -fuzztime=$(FUZZTIME) ./attach/
	$(GO) test -run='^$$' -fuzz=FuzzControlMessage -fuzztime=$(FUZZTIME) ./shim/
	$(GO) test -run='^$$' -fuzz=FuzzRequest -fuzztime=$(FUZZTIME) ./shim/
	$(GO) test -run='^$$' -fuzz=FuzzListenEnv -fuzztime=$(FUZZTIME) ./internal/systemd/
	$(GO) test -run='^$$' -fuzz=FuzzWatchdogEnv -fuzztime=$(FUZZTIME) ./internal/systemd/
	$(GO) test -run='^$$' -fuzz=FuzzParse -fuzztime=$(FUZZTIME) ./internal/handover/

bench: build deps
	bash bench/nbd.sh
	bash bench/qos.sh
	bash bench/filters.sh
	bash bench/filterab.sh
	bash bench/virtio.sh

clean:
	rm -rf bin integration.log
