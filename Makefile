# ngx-wsgi: build, test, run.
#
#   make run     serve examples/ on http://127.0.0.1:8080 (installs what is missing, builds)
#                with tools/ngx_wsgi_cli.py (`ngx-wsgi serve`)
#   make deb     the Debian package libnginx-mod-http-wsgi in build/deb/
#   make test    unit tests + integration tests against Debian's nginx and the vendored nginx
#   make build   the module for Debian's nginx (build/debian) and for the vendored nginx (build/vendored)

SHELL := /bin/bash
PYTHON ?= /usr/bin/python3.11
export PYO3_PYTHON := $(PYTHON)
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

build: build-debian build-vendored

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

$(VENV)/.done: tests/requirements.txt
	rm -rf $(VENV) && $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -r tests/requirements.txt
	touch $@

venv: $(VENV)/.done

unit-test: $(NGX_DEB_TREE)/objs/ngx_auto_config.h
	$(DEB_ENV) $(CARGO) test --profile $(PROFILE) --target-dir target/debian --lib

integration-test: build venv
	NGX_WSGI_REQUIRE_ALL=$${NGX_WSGI_REQUIRE_ALL:-1} $(VENV)/bin/python -m pytest tests/ -v -ra

test: unit-test integration-test

run:
	@command -v nginx >/dev/null && test -d /usr/share/nginx/src || ci/install-deps.sh
	$(MAKE) build-debian
	exec tools/ngx_wsgi_cli.py serve examples/app.py --nginx /usr/sbin/nginx --module build/debian/ngx_http_wsgi_module.so --static /static=examples/static --port 8080 --access-log

# The Debian package libnginx-mod-http-wsgi (debian/): dpkg-buildpackage writes into the
# parent directory; the results are moved to build/deb/. debian/rules builds like
# build-debian, in target/debian, so it reuses what `make build` compiled.
DEB_VERSION = $(shell dpkg-parsechangelog -S Version)
deb:
	@command -v dpkg-buildpackage >/dev/null && dpkg -s debhelper nginx-dev >/dev/null 2>&1 || ci/install-deps.sh
	dpkg-buildpackage -b -us -uc
	rm -rf $(BUILD)/deb && mkdir -p $(BUILD)/deb
	for f in ../libnginx-mod-http-wsgi_$(DEB_VERSION)_*.deb ../libnginx-mod-http-wsgi-dbgsym_$(DEB_VERSION)_*.deb \
	         ../ngx-wsgi_$(DEB_VERSION)_*.buildinfo ../ngx-wsgi_$(DEB_VERSION)_*.changes; do \
	    if [ -e "$$f" ]; then mv -f "$$f" $(BUILD)/deb/; fi; done
	@ls -l $(BUILD)/deb

clean:
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
