#!/usr/bin/env bash
# Tools some tests run besides Python and Redis:
#   docker-compose   tests/test_compose.py validates deploy/docker-compose.yml with `config`
#                    (Debian's docker-compose; no Docker engine needed). A working
#                    `docker compose` plugin does as well.
#   systemd-analyze  tests/test_systemd_units.py verifies workers/*.service (package systemd)
#   ip, unshare      tests/test_multihost.py makes network namespaces (iproute2, util-linux)
#   qemu-img         tests/test_sim_raw_vdi.py reads the simulator's VHD exports with an
#                    independent VHD implementation (package qemu-utils); those tests fail,
#                    never skip, without it
# Installs what is missing with apt-get when run as root; elsewhere it says what to install.
set -euo pipefail

need=()
command -v docker-compose >/dev/null 2>&1 || docker compose version >/dev/null 2>&1 || need+=(docker-compose)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v unshare >/dev/null 2>&1 || need+=(util-linux)
command -v qemu-img >/dev/null 2>&1 || need+=(qemu-utils)

if [ ${#need[@]} -eq 0 ]; then
    echo "ensure-test-tools: docker-compose, systemd-analyze, ip, unshare and qemu-img are present"
    exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "ensure-test-tools: installing ${need[*]} with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    exit 0
fi
echo "ensure-test-tools: missing ${need[*]} (apt-get install ${need[*]}); the tests that use them" \
     "fall back or say so" >&2
