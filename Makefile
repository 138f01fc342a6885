# tinabs developer entry points (GNU make).
PYTHON ?= python3
VENV   := .venv
VPY    := $(VENV)/bin/python
VPIP   := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: venv redis test demo bench clean

venv: $(STAMP)

$(VPY):
	$(PYTHON) -m venv $(VENV)

# Reinstall when pyproject changes, or when tinabs_tasks/ first appears: the
# editable finder only maps top-level packages that existed at install time.
$(STAMP): pyproject.toml $(wildcard tinabs_tasks/__init__.py) | $(VPY)
	$(VPIP) install --quiet --upgrade pip
	$(VPIP) install -e '.[test]'
	touch $@

redis: venv
	bash scripts/ensure-redis.sh

test: venv redis
	$(VENV)/bin/pytest $(PYTEST_ARGS)

demo: venv redis
	$(VPY) -m tinabs_tasks.demo

bench: venv
	@set -e; for f in bench/*.py; do \
		[ -e "$$f" ] || { echo "no bench/*.py scripts"; break; }; \
		echo "== $$f"; $(VPY) "$$f"; \
	done

clean:
	rm -rf $(VENV) .pytest_cache *.egg-info build dist
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
