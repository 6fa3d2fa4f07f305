# regmirror build.
#   make            release build (build/release/regmirror)
#   make run        install deps, build, serve conf/config.yml on :5000
#   make test       install deps, build release + asan, run unit, fuzz smoke and integration tests
#                   (integration: every suite on the filesystem, then the core and proxy
#                   suites on OSS through the emulator)
#   make fuzz       build the libFuzzer targets (clang)
#   make bench      benchmark harness (test/bench)
#   make image      container image regmirror:latest and regmirror:VERSION (Dockerfile)
#   make deb        Debian package in build/deb/ (debian/)

CC      ?= cc
# Build directory; B=/tmp/mybuild keeps concurrent builds of one tree apart.
B       ?= build
PYTHON  ?= /usr/bin/python3
PKGS    := libevent libevent_openssl libevent_pthreads libcurl yaml-0.1 hiredis jansson openssl libpsl
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lhttp_parser -lcrypt -lpthread
WARN    := -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -Wshadow -Wno-unused-parameter
INC     := -Icommon -Imirror
VERSION := $(shell git describe --always --dirty 2>/dev/null || echo dev)

COMMON_SRC := $(wildcard common/*.c common/storage/*.c common/cache/*.c)
MIRROR_SRC := $(filter-out mirror/main.c,$(wildcard mirror/*.c))
UNIT_SRC   := $(wildcard test/unit/test_*.c)
FUZZ_SRC   := $(wildcard test/fuzz/fuzz_*.c)

release_CFLAGS := -O2 -g
asan_CFLAGS    := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined
debug_CFLAGS   := -O0 -g

define variant
$(B)/$(1)/%.o: %.c
	@mkdir -p $$(dir $$@)
	$$(CC) $$(WARN) $$($(1)_CFLAGS) $$(INC) $$(PKG_CFLAGS) -DREGMIRROR_VERSION=\"$$(VERSION)\" -MMD -MP -c $$< -o $$@

$(B)/$(1)/libregmirror.a: $$(patsubst %.c,$(B)/$(1)/%.o,$$(COMMON_SRC) $$(MIRROR_SRC))
	@rm -f $$@
	ar rcs $$@ $$^

$(B)/$(1)/regmirror: $(B)/$(1)/mirror/main.o $(B)/$(1)/libregmirror.a
	$$(CC) $$($(1)_CFLAGS) -o $$@ $$^ $$(PKG_LIBS)

$(B)/$(1)/unit/%: $(B)/$(1)/test/unit/%.o $(B)/$(1)/libregmirror.a
	@mkdir -p $$(dir $$@)
	$$(CC) $$($(1)_CFLAGS) -o $$@ $$^ $$(PKG_LIBS) -lcmocka

$(1): $(B)/$(1)/regmirror $$(patsubst test/unit/%.c,$(B)/$(1)/unit/%,$$(UNIT_SRC))
endef
$(eval $(call variant,release))
$(eval $(call variant,asan))
$(eval $(call variant,debug))

-include $(shell find $(B) -name '*.d' 2>/dev/null)
# The status page's source is assembled into status.o (.incbin, see mirror/status.c).
$(foreach v,release asan debug fuzz/obj,$(B)/$(v)/mirror/status.o): mirror/status_page.html

.DEFAULT_GOAL := release
.PHONY: release asan debug deps run test unit integration integration-fs integration-oss fuzz fuzz-smoke bench format format-check lint hygiene clean
.SECONDARY:

deps:
	@bash scripts/deps.sh

run: deps
	@$(MAKE) --no-print-directory release
	@mkdir -p data
	$(B)/release/regmirror serve conf/config.yml

unit: asan
	@set -e; for t in $(B)/asan/unit/test_*; do echo "== $$t"; ASAN_OPTIONS=detect_leaks=1 $$t; done

# libFuzzer targets: clang. The sources are compiled once with coverage (fuzzer-no-link) and
# every target links against those objects.
FUZZ_FLAGS := -g -O1 -fsanitize=fuzzer,address,undefined
FUZZ_OBJS  := $(patsubst %.c,$(B)/fuzz/obj/%.o,$(COMMON_SRC) $(MIRROR_SRC))
$(B)/fuzz/obj/%.o: %.c
	@mkdir -p $(dir $@)
	clang $(filter-out -Werror,$(WARN)) -g -O1 -fsanitize=fuzzer-no-link,address,undefined $(INC) $(PKG_CFLAGS) -c $< -o $@
$(B)/fuzz/%: test/fuzz/%.c $(FUZZ_OBJS)
	@mkdir -p $(B)/fuzz
	clang $(filter-out -Werror,$(WARN)) $(FUZZ_FLAGS) $(INC) $(PKG_CFLAGS) -o $@ $^ $(PKG_LIBS)
fuzz: $(patsubst test/fuzz/%.c,$(B)/fuzz/%,$(FUZZ_SRC))
fuzz-smoke: fuzz
	@set -e; for f in $(B)/fuzz/fuzz_*; do case $$f in *.log) continue;; esac; \
	  n=$$(basename $$f); mkdir -p $(B)/fuzz-corpus/$$n; \
	  seeds=test/fuzz/corpus/$$n; [ -d $$seeds ] || seeds=; \
	  echo "== $$n"; \
	  if ! $$f -max_total_time=$${FUZZ_SECONDS:-10} $(B)/fuzz-corpus/$$n $$seeds > $(B)/fuzz/$$n.log 2>&1; then \
	    tail -n 60 $(B)/fuzz/$$n.log; echo "fuzz target $$n failed"; exit 1; fi; \
	  tail -n 1 $(B)/fuzz/$$n.log; done

# The whole suite on the filesystem, then the core and proxy suites again with the registries
# storing on OSS (the emulator, test/oss): REGMIRROR_TEST_STORAGE=oss. test_oss_stream.py pushes
# and reads back a 1 GiB blob (REGMIRROR_STREAM_BYTES) and measures the release build's RSS.
# The cluster suites (test_cluster_*.py) start their OSS clusters in the filesystem pass.
INTEGRATION_ENV := REGMIRROR_BIN=$(abspath $(B))/asan/regmirror \
	REGMIRROR_RELEASE_BIN=$(abspath $(B))/release/regmirror
OSS_SUITES := test_conformance_blobs.py test_conformance_manifests.py \
	test_conformance_discovery.py test_conformance_management.py test_badinput.py \
	test_skopeo.py test_proxy.py test_cache.py test_oss_stream.py \
	test_proxy_push.py test_proxy_early.py test_upstream_hardening.py test_answer_headers.py \
	test_cluster_fetch.py
integration: release asan
	@rc=0; $(MAKE) --no-print-directory integration-fs || rc=1; \
	  $(MAKE) --no-print-directory integration-oss || rc=1; exit $$rc
integration-fs:
	@echo "== integration: storage.filesystem, every suite"
	cd test/integration && $(INTEGRATION_ENV) $(PYTHON) -m pytest -q -ra .
integration-oss:
	@echo "== integration: storage.oss (OSS emulator), core and proxy suites"
	cd test/integration && REGMIRROR_TEST_STORAGE=oss $(INTEGRATION_ENV) \
	  $(PYTHON) -m pytest -q -ra $(OSS_SUITES)

test: deps
	@$(MAKE) --no-print-directory release asan
	@$(MAKE) --no-print-directory unit
	@$(MAKE) --no-print-directory fuzz-smoke
	@$(MAKE) --no-print-directory integration

# Into the daemon DOCKER_HOST names, pulling nothing: a missing debian:bookworm-slim base is
# made with debootstrap and cached in ${XDG_CACHE_HOME:-~/.cache}/regmirror/.
.PHONY: image deb
image: deps
	@bash scripts/image.sh $(VERSION)

# dpkg-buildpackage in a copy of the tree, so the package and its .changes land in build/deb/.
deb: deps
	@rm -rf $(B)/deb && mkdir -p $(B)/deb/src
	cp -r Makefile README.md LICENSE common mirror conf debian $(B)/deb/src/
	cd $(B)/deb/src && dpkg-buildpackage -us -uc -b
	@ls $(B)/deb/*.deb

bench: deps release
	REGMIRROR_BIN=$(abspath $(B))/release/regmirror BENCH_OUT=$(abspath $(B))/bench $(PYTHON) test/bench/bench.py

format:
	clang-format -i $$(git ls-files '*.c' '*.h')

format-check:
	clang-format --dry-run -Werror $$(git ls-files '*.c' '*.h')

lint:
	cppcheck --quiet --error-exitcode=1 --enable=warning,performance,portability --inline-suppr $(INC) common mirror
	clang-tidy --quiet --warnings-as-errors='*' $$(git ls-files 'common/*.c' 'mirror/*.c') -- $(WARN) $(INC) $(PKG_CFLAGS)

hygiene:
	@bash scripts/hygiene.sh

clean:
	rm -rf $(B)
