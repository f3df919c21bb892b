# Cairn — the two commands a new user runs: `make run` and `make test`.
# Both install what is missing (Debian/Ubuntu, as root or with sudo), then build.

SWIFT ?= swift
SPOOL ?= ./spool
BUILD_FLAGS ?=

.PHONY: deb deb-check all deps build test test-props-long soak run bench bench-long bench-peers bench-traces docs clean release-has-no-test-hooks fuzz fuzz-build fuzz-run

all: build

# System packages: libinotifytools0-dev (the watcher); jq, rsync, python3 and procps
# (the tour, and the tests' script workflows, fake LLM server and process checks); a C
# compiler, gcc (the I/O fault tests build their LD_PRELOAD shim with `cc`); strace (the
# power-loss crash-state test records the binary's file-system calls with it); as root
# with FUSE, glusterfs-server and glusterfs-client (the test of a spool on GlusterFS).
deps:
	@command -v $(SWIFT) >/dev/null 2>&1 || { echo "error: swift not found on PATH (Swift 6.2 or later is needed: https://www.swift.org/install/linux/)" >&2; exit 1; }
	@missing=""; \
	[ -f /usr/include/inotifytools/inotifytools.h ] || missing="$$missing libinotifytools0-dev"; \
	command -v jq >/dev/null 2>&1 || missing="$$missing jq"; \
	command -v rsync >/dev/null 2>&1 || missing="$$missing rsync"; \
	command -v python3 >/dev/null 2>&1 || missing="$$missing python3"; \
	command -v pgrep >/dev/null 2>&1 || missing="$$missing procps"; \
	command -v cc >/dev/null 2>&1 || missing="$$missing gcc"; \
	command -v strace >/dev/null 2>&1 || missing="$$missing strace"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
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
	$(call helper-client,$(BUILD_FLAGS))

# The scripts' helper client (Sources/cairn-helper, docs/scripts.md "How helpers reach the
# daemon"): plain C built with the system's compiler beside the build's `cairn`, which
# finds it there. (SwiftPM would link a C executable against the Swift runtime, doubling
# its start.) Without it, the scripts' helpers run the whole binary.
CC ?= cc
HELPER_CFLAGS ?= -O2 -std=gnu11 -Wall -Wextra -Werror
helper-client = $(CC) $(HELPER_CFLAGS) -o "$$($(SWIFT) build $(1) --show-bin-path)/cairn-helper" Sources/cairn-helper/cairn-helper.c

# Every test: unit, replay fixtures, crash (SIGKILL) and end-to-end tests of the binary;
# then proof that a release build carries no test hook.
test: deps
	$(SWIFT) build --build-tests $(BUILD_FLAGS)
	$(call helper-client,$(BUILD_FLAGS))
	$(SWIFT) test --skip-build $(BUILD_FLAGS)
	$(MAKE) --no-print-directory release-has-no-test-hooks
	$(MAKE) --no-print-directory fuzz FUZZ_TIME=$(FUZZ_TEST_TIME)

# Fuzzing (docs/reliability.md, "Fuzzing"): cairn-fuzz built with libFuzzer and
# AddressSanitizer in a build directory of its own, then each target for FUZZ_TIME seconds:
# first over its committed seed corpus (Tests/Fuzz/corpus/TARGET) and what earlier runs
# found (.build/fuzz/corpus/TARGET), then mutating. A broken invariant stops that target,
# leaving the input in .build/fuzz/crash-TARGET-*, and fails the run after the others. `make test` runs each target for FUZZ_TEST_TIME.
FUZZ_TIME ?= 600
FUZZ_TEST_TIME ?= 3
FUZZ_TARGETS ?= drop config journal blob sse
FUZZ_BUILD = $(SWIFT) build --scratch-path .build/fuzz -c debug -Xswiftc -sanitize=fuzzer,address -Xswiftc -DCAIRN_FUZZ --product cairn-fuzz

fuzz-build: deps
	$(FUZZ_BUILD) $(BUILD_FLAGS)

fuzz: fuzz-build
	@$(MAKE) --no-print-directory fuzz-run

# The runs alone, with the binary fuzz-build made.
fuzz-run:
	@bin=.build/fuzz/debug/cairn-fuzz; failed=""; \
	for t in $(FUZZ_TARGETS); do \
	  mkdir -p .build/fuzz/corpus/$$t; \
	  echo "fuzz $$t: $(FUZZ_TIME) s"; \
	  CAIRN_FUZZ_TARGET=$$t ASAN_OPTIONS=detect_leaks=0 SWIFT_BACKTRACE=enable=no $$bin -max_total_time=$(FUZZ_TIME) -max_len=4096 -timeout=10 -rss_limit_mb=2048 \
	    -detect_leaks=0 -print_final_stats=1 -artifact_prefix=.build/fuzz/crash-$$t- \
	    .build/fuzz/corpus/$$t Tests/Fuzz/corpus/$$t > .build/fuzz/$$t.log 2>&1; rc=$$?; \
	  grep -E '^#[0-9]+[[:space:]]+(INITED|DONE)|^stat::number_of_executed_units|^stat::peak_rss_mb' .build/fuzz/$$t.log | sed "s/^/  /"; \
	  if [ $$rc != 0 ]; then tail -40 .build/fuzz/$$t.log; echo "fuzz $$t: failed (input saved as .build/fuzz/crash-$$t-*; log .build/fuzz/$$t.log)" >&2; failed="$$failed $$t"; fi; \
	done; \
	if [ -n "$$failed" ]; then echo "fuzz: invariants broken in:$$failed" >&2; exit 1; fi

# The soak (docs/reliability.md, "Soak"): a mixed load on one spool with three daemons, one
# SIGKILLed every few seconds, live rsync copies restored and finished, for DURATION (90s,
# 30m, 2h); its counters print at the end and go to .build/soak-report.txt.
DURATION ?= 30m
soak: deps
	$(SWIFT) build --build-tests $(BUILD_FLAGS)
	$(call helper-client,$(BUILD_FLAGS))
	CAIRN_SOAK_DURATION=$(DURATION) $(SWIFT) test --skip-build $(BUILD_FLAGS) --filter SoakTests

# The replay engine's property tests with many more cases than `make test` runs
# (docs/reliability.md, "Property tests"); CAIRN_PROP_CASES and CAIRN_TEST_SEED as given.
CAIRN_PROP_CASES ?= 3000
test-props-long: deps
	$(SWIFT) build --build-tests $(BUILD_FLAGS)
	CAIRN_PROP_CASES=$(CAIRN_PROP_CASES) $(SWIFT) test --skip-build $(BUILD_FLAGS) --filter ReplayPropertyTests

# Test hooks (CAIRN_CRASH_AT, CAIRN_SIMULATE_*) exist in debug builds only: build the two
# modules that hold them in release and check that no hook's name is in their objects.
release-has-no-test-hooks:
	$(SWIFT) build -c release --target CairnWatch $(BUILD_FLAGS) >/dev/null
	$(SWIFT) build -c release --target CairnSpool $(BUILD_FLAGS) >/dev/null
	@dir=$$($(SWIFT) build -c release --show-bin-path); \
	debug=$$($(SWIFT) build --show-bin-path); \
	n=$$(cat $$dir/CairnSpool.build/*.o $$dir/CairnWatch.build/*.o | strings | grep -c 'CAIRN_CRASH_AT\|CAIRN_SIMULATE_'); \
	d=$$(cat $$debug/CairnSpool.build/*.o $$debug/CairnWatch.build/*.o | strings | grep -c 'CAIRN_CRASH_AT\|CAIRN_SIMULATE_'); \
	if [ "$$d" = 0 ]; then echo "release-has-no-test-hooks: the debug build has no hooks either: this check cannot see them" >&2; exit 1; fi; \
	if [ "$$n" != 0 ]; then echo "release-has-no-test-hooks: $$n test hook name(s) in the release build" >&2; exit 1; fi; \
	echo "release build: no test hooks (the debug build has $$d references)"

# The Debian package (docs/operations.md, "Install from the Debian package"): a release
# build with the Swift runtime linked in statically (the package needs no Swift on the
# machine), its helper client, man pages from argument-parser's generate-manual plugin, and
# packaging/deb/build.sh. DebTests installs, starts, approves and purges a package in the
# suite when running as root.
VERSION ?= 0.1.0
deb: deps
	@# Foundation's networking (the MCP SDK's HTTP transport) links libcurl: statically linked
	@# Foundation needs its development files to link, and the package depends on libcurl4.
	@[ -f /usr/include/x86_64-linux-gnu/curl/curl.h ] || [ -f /usr/include/curl/curl.h ] || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq libcurl4-openssl-dev >/dev/null; }
	$(SWIFT) build -c release --static-swift-stdlib --scratch-path .build/deb-build --product cairn $(BUILD_FLAGS)
	$(CC) $(HELPER_CFLAGS) -o .build/deb-build/release/cairn-helper Sources/cairn-helper/cairn-helper.c
	$(SWIFT) package plugin generate-manual --multi-page >/dev/null
	packaging/deb/build.sh .build/deb-build/release .build/plugins/GenerateManual/outputs/cairn .build $(VERSION)

# The package on a fresh Debian of this machine's release (packaging/deb/fresh-debian-check.sh:
# a debootstrap'd minimal system, made once under /var/tmp, copied for each check): dpkg -i,
# the unit's ExecStart by hand, a run approved with `touch`, purge. Root and the Debian mirror.
deb-check: deb
	packaging/deb/fresh-debian-check.sh .build/cairn_$(VERSION)_$$(dpkg --print-architecture).deb

# The guided demo on ./spool: builds, starts the daemon, submits a run that waits for
# your approval, and tells you the `touch` that approves it.
run: build
	$$($(SWIFT) build $(BUILD_FLAGS) --show-bin-path)/cairn demo --spool $(SPOOL)

# Figures for docs/benchmarks.md (release build): `cairn bench` (what users run on their own
# disks: the floor and the workloads, each with its ratio to the floor), then cairn-bench's
# figures (the durable-write routine, replay, daemon start and ls over 100,000 runs, the long run).
bench: deps
	$(SWIFT) build -c release --product cairn
	$(call helper-client,-c release)
	$(SWIFT) build -c release --product cairn-bench
	$(SWIFT) build -c release --product cairn-fixtures
	$$($(SWIFT) build -c release --show-bin-path)/cairn bench
	$$($(SWIFT) build -c release --show-bin-path)/cairn-bench

# Cairn and its peers (LangGraph + SqliteSaver, DBOS + SQLite, from PyPI into
# bench/peers/.venv) on the same four workloads, one session, one table (bench/peers/run).
bench-peers: deps
	$(SWIFT) build -c release --product cairn
	$(call helper-client,-c release)
	bench/peers/run

# What tracing costs: script runs by a daemon without traces, with --otlp-endpoint to a
# discarding receiver and to a closed port, interleaved rounds (docs/benchmarks.md, "Traces").
bench-traces: deps
	$(SWIFT) build -c release --product cairn
	$(call helper-client,-c release)
	bench/traces/run

# Only the long-run figures (a 100,000-step run; CAIRN_BENCH_LONG_STEPS=N for another size).
bench-long: deps
	$(SWIFT) build -c release --product cairn-bench
	$(SWIFT) build -c release --product cairn-fixtures
	$$($(SWIFT) build -c release --show-bin-path)/cairn-bench long

# API documentation (DocC, swift-docc-plugin) for Cairn and CairnTesting: static sites in
# .build/docs/Cairn and .build/docs/CairnTesting (serve .build/docs and open /Cairn/documentation/cairn/).
# Not part of `make test`: it builds, extracts symbol graphs and runs docc per target; measured
# on 2 cores: 1 min 5 s for both after a build, 4.5 min after a change to CairnSpool. Unresolved
# links and other warnings fail it.
DOCS_TARGETS ?= Cairn CairnTesting
docs: deps
	@mkdir -p .build/docs
	@for t in $(DOCS_TARGETS); do \
	  $(SWIFT) package --disable-sandbox generate-documentation --target $$t $(BUILD_FLAGS) \
	    --warnings-as-errors --transform-for-static-hosting --hosting-base-path $$t \
	    --output-path .build/docs/$$t || exit 1; \
	done

clean:
	rm -rf .build
