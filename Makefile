# Cairn — the two commands a new user runs: `make run` and `make test`.
# Both install what is missing (Debian/Ubuntu, as root or with sudo), then build.

SWIFT ?= swift
SPOOL ?= ./spool
BUILD_FLAGS ?=

.PHONY: all deps build test run bench clean

all: build

# System packages: libinotifytools0-dev (the watcher); jq, rsync, python3 and procps
# (the tour, and the tests' script workflows, fake LLM server and process checks); as root
# with FUSE, glusterfs-server and glusterfs-client (the test of a spool on GlusterFS).
deps:
	@command -v $(SWIFT) >/dev/null 2>&1 || { echo "error: swift not found on PATH (Swift 6.2 or later is needed: https://www.swift.org/install/linux/)" >&2; exit 1; }
	@missing=""; \
	[ -f /usr/include/inotifytools/inotifytools.h ] || missing="$$missing libinotifytools0-dev"; \
	command -v jq >/dev/null 2>&1 || missing="$$missing jq"; \
	command -v rsync >/dev/null 2>&1 || missing="$$missing rsync"; \
	command -v python3 >/dev/null 2>&1 || missing="$$missing python3"; \
	command -v pgrep >/dev/null 2>&1 || missing="$$missing procps"; \
	if [ "$$(id -u)" = 0 ] && [ -e /dev/fuse ]; then \
	  command -v glusterd >/dev/null 2>&1 || missing="$$missing glusterfs-server"; \
	  command -v mount.glusterfs >/dev/null 2>&1 || [ -x /sbin/mount.glusterfs ] || missing="$$missing glusterfs-client"; \
	fi; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  echo "installing:$$missing"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null || { echo "error: could not install$$missing with apt-get" >&2; exit 1; }; \
	fi

build: deps
	$(SWIFT) build $(BUILD_FLAGS)

# Every test: unit, replay fixtures, crash (SIGKILL) and end-to-end tests of the binary.
test: deps
	$(SWIFT) build --build-tests $(BUILD_FLAGS)
	$(SWIFT) test --skip-build $(BUILD_FLAGS)

# The guided demo on ./spool: builds, starts the daemon, submits a run that waits for
# your approval, and tells you the `touch` that approves it.
run: build
	$$($(SWIFT) build $(BUILD_FLAGS) --show-bin-path)/cairn demo --spool $(SPOOL)

# Figures for docs/benchmarks.md (release build; the daemon figures use cairn-fixtures).
bench: deps
	$(SWIFT) build -c release --product cairn-bench
	$(SWIFT) build -c release --product cairn-fixtures
	$$($(SWIFT) build -c release --show-bin-path)/cairn-bench

clean:
	rm -rf .build
