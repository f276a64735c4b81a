# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
TWISTD  = $(VENV)/bin/twistd
CONFIG ?= etc/pyenvoy.yaml
TESTS  ?= tests
# Debian packages the tests and benchmarks drive for real.
# gcc builds pyenvoy's C extensions (pyenvoy/upstream/_keyhash.c,
# pyenvoy/filters/postgres_proxy/_scan.c, pyenvoy/network/_relay.c) at install.
APT_PACKAGES = redis-server redis-tools iperf3 netcat-openbsd bind9-dnsutils postgresql \
	gcc libc6-dev

.PHONY: run install system-deps test trial packaging-check bench clean

$(VENV)/.installed: setup.cfg setup.py pyproject.toml pyenvoy/upstream/_keyhash.c \
		pyenvoy/filters/postgres_proxy/_scan.c pyenvoy/network/_relay.c
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

run: install
	$(TWISTD) -n --pidfile= pyenvoy -c $(CONFIG)

system-deps:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

# The whole suite: every server a test needs is started by tests/support
# on 127.0.0.1 with a port the OS picks.
test: system-deps install packaging-check trial

# The suite runs on pyenvoy's reactor (what `twistd pyenvoy` installs); the
# proxying tests run again on Twisted's default one, which embedders may use.
DEFAULT_REACTOR_TESTS = tests.test_tcp_proxy tests.test_relay tests.test_tls tests.test_tls_layer \
	tests.test_upstream_tls tests.test_redis_proxy tests.test_postgres_proxy

trial: install
	$(PY) -m twisted.trial --reactor=pyenvoy --reporter=text $(TESTS)
	$(PY) -m twisted.trial --reporter=text $(DEFAULT_REACTOR_TESTS)

# `pip install .` (not editable) must still give `twistd pyenvoy`.
packaging-check: install
	rm -rf build/pkgcheck && $(PY) -m venv build/pkgcheck
	build/pkgcheck/bin/pip install -q . 2>&1 | grep -v '^WARNING' || true
	cd build && pkgcheck/bin/twistd pyenvoy --mode validate -c ../$(CONFIG)

bench: install
	$(PY) bench/tcp_proxy --quick

clean:
	rm -rf build _trial_temp* dropin.cache twisted/plugins/dropin.cache
