# ngx-wsgi: build, test, run.
#
#   make run     serve examples/ on http://127.0.0.1:8080 (installs what is missing, builds)
#                with tools/ngx_wsgi_cli.py (`ngx-wsgi serve`)
#   make deb     the Debian package libnginx-mod-http-wsgi in build/deb/
#                (make deb DIST=trixie: the Debian 13 package, in build/deb-trixie/)
#   make test    unit tests + integration tests against Debian's nginx and the vendored nginx
#   make build   the module for Debian's nginx (build/debian) and for the vendored nginx (build/vendored)

SHELL := /bin/bash
PYTHON ?= /usr/bin/python3.11
export PYO3_PYTHON := $(PYTHON)
PY_VERSION := $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
CARGO ?= cargo
PROFILE ?= release
BUILD := $(CURDIR)/build
NGX_DEB_TREE := $(BUILD)/nginx-debian-src
DEB_ENV := NGINX_SOURCE_DIR=$(NGX_DEB_TREE) NGINX_BUILD_DIR=$(NGX_DEB_TREE)/objs
VENV := $(BUILD)/venv
SRCS := $(shell find src -type f) Cargo.toml build.rs

.PHONY: bench bench-quick profile all build build-debian build-vendored deps venv test unit-test integration-test run deb clean

all: build

deps:
	ci/install-deps.sh

# Debian's nginx-dev ships the source tree but no objs/: configure a copy with the flags
# Debian's own nginx was built with, so the module's signature matches /usr/sbin/nginx.
$(NGX_DEB_TREE)/objs/ngx_auto_config.h:
	@test -d /usr/share/nginx/src || { echo "nginx-dev is not installed: run 'make deps'"; exit 1; }
	rm -rf $(NGX_DEB_TREE) && mkdir -p $(BUILD) && cp -r /usr/share/nginx/src $(NGX_DEB_TREE)
	cd $(NGX_DEB_TREE) && source ./conf_flags && ./configure "$${NGX_CONF_FLAGS[@]}" > configure.log

# `make build PYTHON=/path/to/python3.X` (a Python other than Debian's 3.11) builds only
# build/py3.X/ (see "Other Pythons" below); the default builds build/debian + build/vendored.
ifeq ($(PYTHON),/usr/bin/python3.11)
build: build-debian build-vendored
else
build: build-py$(PY_VERSION)
endif

build-debian: $(BUILD)/debian/ngx_http_wsgi_module.so
build-vendored: $(BUILD)/vendored/ngx_http_wsgi_module.so

$(BUILD)/debian/ngx_http_wsgi_module.so: $(SRCS) $(NGX_DEB_TREE)/objs/ngx_auto_config.h
	$(DEB_ENV) $(CARGO) build --profile $(PROFILE) --target-dir target/debian
	mkdir -p $(@D) && cp target/debian/$(PROFILE)/libngx_http_wsgi_module.so $@.tmp && mv -f $@.tmp $@

# The vendored nginx gets the modules users put around a content handler (and the tests
# exercise): debug logging, sub_filter, addition, auth_request, gunzip.
NGX_VENDORED_ARGS := --with-debug --with-http_sub_module --with-http_addition_module \
	--with-http_auth_request_module --with-http_gunzip_module --with-http_stub_status_module
$(BUILD)/vendored/ngx_http_wsgi_module.so: $(SRCS)
	NGX_CONFIGURE_ARGS="$(NGX_VENDORED_ARGS)" $(CARGO) build --profile $(PROFILE) --features vendored --target-dir target/vendored
	mkdir -p $(@D) && cp target/vendored/$(PROFILE)/libngx_http_wsgi_module.so $@.tmp && mv -f $@.tmp $@
	cp "$$(ls -t target/vendored/$(PROFILE)/build/nginx-sys-*/out/objs/nginx | head -1)" $(@D)/nginx.tmp && mv -f $(@D)/nginx.tmp $(@D)/nginx

# Other Pythons (issue 12): build/py3.X/ngx_http_wsgi_module.so for Debian's nginx 1.22,
# embedding the CPython $(PYTHON3.X), each in its own cargo target dir (target/py3.X);
# build/venv-py3.X is that Python's test virtualenv. The pyenv builds (shared libpython)
# are the defaults; `make build PYTHON=...` sets PYTHON3.X for its own version. A libpython
# the dynamic loader does not know (not in `ldconfig -p`) gets an rpath to its LIBDIR.
PYENV_VERSIONS ?= /root/.pyenv/versions
PYTHON3.12 ?= $(PYENV_VERSIONS)/3.12.1/bin/python3.12
PYTHON3.13 ?= $(PYENV_VERSIONS)/3.13.0/bin/python3.13
ifneq ($(PYTHON),/usr/bin/python3.11)
PYTHON$(PY_VERSION) := $(PYTHON)
endif
EXTRA_PYTHONS ?= 3.12 3.13

.PHONY: build-pythons venv-pythons
.PRECIOUS: $(BUILD)/py3.%/ngx_http_wsgi_module.so $(BUILD)/venv-py3.%/.done
build-py3.%: $(BUILD)/py3.%/ngx_http_wsgi_module.so ;
venv-py3.%: $(BUILD)/venv-py3.%/.done ;
build-pythons: $(foreach v,$(EXTRA_PYTHONS),build-py$(v))
venv-pythons: $(foreach v,$(EXTRA_PYTHONS),venv-py$(v))

$(BUILD)/py3.%/ngx_http_wsgi_module.so: $(SRCS) $(NGX_DEB_TREE)/objs/ngx_auto_config.h
	@test -x "$(PYTHON3.$*)" || { echo "no Python 3.$* at '$(PYTHON3.$*)': pass PYTHON=/path/to/python3.$*"; exit 1; }
	set -e; py="$(PYTHON3.$*)"; \
	ver=$$("$$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])'); \
	test "$$ver" = "3.$*" || { echo "$$py is Python $$ver, not 3.$*"; exit 1; }; \
	libdir=$$("$$py" -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))'); \
	shared=$$("$$py" -c 'import sysconfig; print(sysconfig.get_config_var("Py_ENABLE_SHARED") or 0)'); \
	test "$$shared" = 1 || { echo "$$py has no shared libpython (Py_ENABLE_SHARED=0): the module cannot embed it"; exit 1; }; \
	if ldconfig -p | grep -q "libpython3.$*.so.1.0 "; then rustflags=""; \
	else rustflags="-C link-args=-Wl,-rpath,$$libdir"; fi; \
	echo "building for $$py (libpython3.$* in $$libdir) $${rustflags:+with $$rustflags}"; \
	PYO3_PYTHON="$$py" RUSTFLAGS="$$rustflags" $(DEB_ENV) $(CARGO) build --profile $(PROFILE) --target-dir target/py3.$*
	mkdir -p $(@D) && cp target/py3.$*/$(PROFILE)/libngx_http_wsgi_module.so $@.tmp && mv -f $@.tmp $@

$(BUILD)/venv-py3.%/.done: tests/requirements.txt
	rm -rf $(@D) && $(PYTHON3.$*) -m venv $(@D)
	$(@D)/bin/pip install -q -r tests/requirements.txt
	touch $@

$(VENV)/.done: tests/requirements.txt
	rm -rf $(VENV) && $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -r tests/requirements.txt
	touch $@

venv: $(VENV)/.done

unit-test: $(NGX_DEB_TREE)/objs/ngx_auto_config.h
	$(DEB_ENV) $(CARGO) test --profile $(PROFILE) --target-dir target/debian --lib

# The whole suite against Debian's Python 3.11 (flavours debian and vendored), then the core
# suite (PY_CORE_TESTS: WSGI semantics, the thread pool, workers, real frameworks and
# applications) against each of EXTRA_PYTHONS (flavours py3.12, py3.13: Debian's nginx,
# build/py3.X, build/venv-py3.X; about 3.5 minutes for both).
PY_CORE_TESTS := test_environ test_input test_response test_errors test_threads test_hardening \
	test_routing test_flask test_django test_frameworks test_vcs test_workers
comma := ,
PY_FLAVORS = $(subst $() ,$(comma),$(foreach v,$(EXTRA_PYTHONS),py$(v)))
integration-test: build venv integration-test-pythons-prereqs
	NGX_WSGI_REQUIRE_ALL=$${NGX_WSGI_REQUIRE_ALL:-1} $(VENV)/bin/python -m pytest tests/ -v -ra
	$(MAKE) --no-print-directory integration-test-pythons

.PHONY: integration-test-pythons integration-test-pythons-prereqs
integration-test-pythons-prereqs: build-pythons venv-pythons
integration-test-pythons: venv integration-test-pythons-prereqs
ifneq ($(strip $(EXTRA_PYTHONS)),)
	NGX_WSGI_FLAVORS=$(PY_FLAVORS) NGX_WSGI_REQUIRE_ALL=$${NGX_WSGI_REQUIRE_ALL:-1} \
	$(foreach v,$(EXTRA_PYTHONS),NGX_WSGI_PYTHON$(subst .,_,$(v))=$(PYTHON$(v))) \
	$(VENV)/bin/python -m pytest $(foreach t,$(PY_CORE_TESTS),tests/$(t).py) -v -ra
else
	@echo "EXTRA_PYTHONS is empty: no other Pythons to test"
endif

test: unit-test integration-test

run:
	@command -v nginx >/dev/null && test -d /usr/share/nginx/src || ci/install-deps.sh
	$(MAKE) build-debian
	exec tools/ngx_wsgi_cli.py serve examples/app.py --nginx /usr/sbin/nginx --module build/debian/ngx_http_wsgi_module.so --static /static=examples/static --port 8080 --access-log

# The Debian package libnginx-mod-http-wsgi (debian/): dpkg-buildpackage writes into the
# parent directory; the results are moved to build/deb/. debian/rules builds like
# build-debian, in target/debian, so it reuses what `make build` compiled.
#
# `make deb DIST=trixie` builds it for another Debian release instead (Debian 13: nginx 1.26,
# Python 3.13), in a root made with debootstrap (build/trixie-root, kept and reused), with
# tools/deb-chroot.sh; the results go to build/deb-trixie/. Needs root and debootstrap.
DIST ?=
DEB_VERSION = $(shell dpkg-parsechangelog -S Version)
ifneq ($(DIST),)
deb:
	tools/deb-chroot.sh $(DIST)
else
deb:
	@command -v dpkg-buildpackage >/dev/null && dpkg -s debhelper nginx-dev >/dev/null 2>&1 || ci/install-deps.sh
	dpkg-buildpackage -b -us -uc
	rm -rf $(BUILD)/deb && mkdir -p $(BUILD)/deb
	for f in ../libnginx-mod-http-wsgi_$(DEB_VERSION)_*.deb ../libnginx-mod-http-wsgi-dbgsym_$(DEB_VERSION)_*.deb \
	         ../ngx-wsgi_$(DEB_VERSION)_*.buildinfo ../ngx-wsgi_$(DEB_VERSION)_*.changes; do \
	    if [ -e "$$f" ]; then mv -f "$$f" $(BUILD)/deb/; fi; done
	@ls -l $(BUILD)/deb
endif

clean:
	@! grep -q " $(BUILD)/" /proc/mounts || { echo "mounts left under $(BUILD):"; \
	    grep " $(BUILD)/" /proc/mounts; exit 1; }
	rm -rf build target
	rm -rf debian/.debhelper debian/build debian/tmp debian/libnginx-mod-http-wsgi debian/files \
	       debian/debhelper-build-stamp debian/*.substvars debian/*.debhelper debian/*.debhelper.log

# The peer benchmark (bench/README.md): ngx-wsgi beside nginx, gunicorn, uWSGI, Granian and
# bjoern, in one run; results in bench/results/.
bench: build
	$(PYTHON) bench/run.py $(BENCH_ARGS)

bench-quick: build
	$(PYTHON) bench/run.py --quick $(BENCH_ARGS)

# Profile the module under load (bench/PROFILING.md).
profile: build-debian
	bench/profile.sh

# Lints, for both builds (CI runs this before the tests): rustfmt (rustfmt.toml) and clippy
# with warnings as errors; Cargo.toml's [lints] deny unsafe operations without an `unsafe`
# block and `unsafe` blocks without a SAFETY comment.
.PHONY: lint
lint: $(NGX_DEB_TREE)/objs/ngx_auto_config.h
	$(CARGO) fmt --check
	$(DEB_ENV) $(CARGO) clippy --profile $(PROFILE) --all-targets --target-dir target/debian -- -D warnings
	NGX_CONFIGURE_ARGS="$(NGX_VENDORED_ARGS)" $(CARGO) clippy --profile $(PROFILE) --all-targets --features vendored --target-dir target/vendored -- -D warnings
