# The two commands of the README: `make run` and `make test`. Everything else
# here is a convenience around CMake.
BUILD      ?= build
ASAN_BUILD ?= build-asan
FUZZ_BUILD ?= build-fuzz
JOBS       ?= $(shell nproc)
PYTHON     ?= /usr/bin/python3
FUZZ_JOBS  ?= 2
FUZZ_TARGETS ?= command data header pgpmime openpgp x509 dkim resp smtp_reply http

.PHONY: all setup build run sink test test-cluster chaos fuzz fuzz-corpus lint format clean bench bench-quick

all: build

setup:
	@sh deploy/setup.sh

$(BUILD)/Makefile:
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo

build: setup $(BUILD)/Makefile
	cmake --build $(BUILD) -j $(JOBS)

run: build
	$(BUILD)/sealpost up

# A sink that prints what it receives, for the route in sealpost.conf.
sink: setup
	$(PYTHON) -m aiosmtpd -n -c aiosmtpd.handlers.Debugging -l 127.0.0.1:2526

$(ASAN_BUILD)/Makefile:
	cmake -S . -B $(ASAN_BUILD) -DCMAKE_BUILD_TYPE=Debug -DSEALPOST_SANITIZE=ON

$(FUZZ_BUILD)/Makefile:
	CC=clang cmake -S . -B $(FUZZ_BUILD) -DCMAKE_BUILD_TYPE=Debug -DSEALPOST_SANITIZE=ON \
		-DSEALPOST_FUZZ=ON

# Unit tests run in the plain and the sanitizer build; the integration tests
# drive the sanitizer build's binary, so a memory error in any path they reach
# fails the run. The fuzz targets run for a fixed time each (30 s), two at
# a time, on a corpus that grows in the build tree from run to run. The fuzz
# tree is configured again first: a target added since it was made is not a
# target its Makefile knows until then. The integration tests run in a
# network namespace of their own (tests/netns.sh): loopback only, every port
# theirs, 443 for the WKD server among them.
test: setup build $(ASAN_BUILD)/Makefile $(FUZZ_BUILD)/Makefile
	cmake --build $(ASAN_BUILD) -j $(JOBS)
	cmake -S . -B $(FUZZ_BUILD) > /dev/null
	cmake --build $(FUZZ_BUILD) -j $(JOBS) --target $(FUZZ_TARGETS:%=fuzz_%)
	$(PYTHON) tests/lint/layers.py . $(BUILD)
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)
	cd $(ASAN_BUILD) && ctest --output-on-failure -j $(JOBS)
	cd $(FUZZ_BUILD) && ctest --output-on-failure -R fuzz_ -j $(FUZZ_JOBS)
	SEALPOST_BIN=$(abspath $(ASAN_BUILD))/sealpost SEALPOST_TEST_OUTPUT=$(abspath $(ASAN_BUILD))/test-output \
		sh tests/netns.sh $(PYTHON) -m pytest -q -p no:cacheprovider tests/integration
	CHAOS_SECONDS=40 SEALPOST_BIN=$(abspath $(ASAN_BUILD))/sealpost \
		SEALPOST_TEST_OUTPUT=$(abspath $(ASAN_BUILD))/test-output \
		$(PYTHON) -m pytest -q -p no:cacheprovider tests/chaos
	$(PYTHON) tests/cluster/run.py

# The long chaos run: CHAOS_SECONDS of load while workers, ingress nodes
# and Redis are killed at random (also CHAOS_RATE, CHAOS_KILLS, CHAOS_SEED);
# prints the reconciliation table, also left in test-output/chaos-report.txt.
CHAOS_SECONDS ?= 600
chaos: setup $(ASAN_BUILD)/Makefile
	cmake --build $(ASAN_BUILD) -j $(JOBS)
	CHAOS_SECONDS=$(CHAOS_SECONDS) SEALPOST_BIN=$(abspath $(ASAN_BUILD))/sealpost \
		SEALPOST_TEST_OUTPUT=$(abspath $(ASAN_BUILD))/test-output \
		$(PYTHON) -m pytest -s -p no:cacheprovider tests/chaos/test_chaos.py

# The compose cluster alone, under rootful podman (it prints SKIP and exits 0
# where podman cannot run).
test-cluster: setup
	$(PYTHON) tests/cluster/run.py

# Benchmarks against peers measured in the same run; the tables go to
# bench/results/<date>.md with a description of the machine.
RESULTS = bench/results/$(shell date -u +%Y-%m-%d).md
MACHINE = $$(date -u '+%Y-%m-%d %H:%M UTC') on $$(nproc) cores, $$(awk '/MemTotal/ {printf "%.0f GiB", $$2/1048576}' /proc/meminfo), $$(sed -n 's/^model name[^:]*: //p' /proc/cpuinfo | head -1), at $$(git rev-parse --short HEAD 2>/dev/null || echo '?')
bench: build
	@mkdir -p bench/results
	@{ echo "## $(MACHINE)"; echo; } >> $(RESULTS)
	$(PYTHON) bench/accept.py --build $(BUILD) --out $(RESULTS)
	$(PYTHON) bench/relay.py --build $(BUILD) --out $(RESULTS)
	$(PYTHON) bench/connections.py --build $(BUILD) --out $(RESULTS)
	$(PYTHON) bench/encrypted.py --build $(BUILD) --out $(RESULTS)
	$(PYTHON) bench/dkim.py --build $(BUILD) --out $(RESULTS)
	sh tests/netns.sh $(PYTHON) bench/discovery.py --build $(BUILD) --out $(RESULTS)
	$(PYTHON) bench/redis_calls.py --build $(BUILD) --out $(RESULTS)
	$(PYTHON) bench/callgrind.py --build $(BUILD) --out $(RESULTS)

# The goal cases of issue 19 alone, in a few minutes: accept (4 KB over 50
# new connections, 100 KB over one kept), relay end to end with 1 and 2
# workers against Postfix, idle connections and one 25 MiB message, and
# what Redis spends per message on each call.
bench-quick: build
	@mkdir -p bench/results
	@{ echo "## $(MACHINE) (bench-quick)"; echo; } >> $(RESULTS)
	$(PYTHON) bench/accept.py --build $(BUILD) --quick --runs 5 --out $(RESULTS)
	$(PYTHON) bench/relay.py --build $(BUILD) --peers postfix --runs 5 --count 1000 --seconds 5 --out $(RESULTS)
	$(PYTHON) bench/connections.py --build $(BUILD) --out $(RESULTS)
	$(PYTHON) bench/redis_calls.py --build $(BUILD) --out $(RESULTS)

# Longer fuzzing runs, by hand: FUZZ_SECONDS each, one target at a time, into
# the build tree's corpus; then `make fuzz-corpus` to keep what they found.
FUZZ_SECONDS ?= 300
fuzz: setup $(FUZZ_BUILD)/Makefile
	cmake -S . -B $(FUZZ_BUILD) > /dev/null
	cmake --build $(FUZZ_BUILD) -j $(JOBS) --target $(FUZZ_TARGETS:%=fuzz_%)
	for t in $(FUZZ_TARGETS); do \
		$(FUZZ_BUILD)/tests/fuzz_$$t -max_total_time=$(FUZZ_SECONDS) -max_len=4096 \
			$(FUZZ_BUILD)/tests/corpus-$$t tests/fuzz/corpus/$$t || exit 1; \
	done

# Merges the build tree's grown corpus into tests/fuzz/corpus/<target>,
# minimized by libFuzzer (-set_cover_merge=1), for a commit.
fuzz-corpus: setup $(FUZZ_BUILD)/Makefile
	cmake -S . -B $(FUZZ_BUILD) > /dev/null
	cmake --build $(FUZZ_BUILD) -j $(JOBS) --target $(FUZZ_TARGETS:%=fuzz_%)
	sh tests/fuzz/merge_corpus.sh $(FUZZ_BUILD) $(FUZZ_TARGETS)

# The layering of docs/architecture.md (floors, no circle of calls inside a
# folder), then the analyzers.
lint: build
	$(PYTHON) tests/lint/layers.py . $(BUILD)
	clang-tidy -p $(BUILD) --quiet $$(git ls-files '*.c')
	cppcheck --enable=warning,performance,portability --error-exitcode=1 --quiet \
		--inline-suppr -I . $$(git ls-files '*.c')

format:
	clang-format -i $$(git ls-files '*.c' '*.h')

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) $(FUZZ_BUILD)
