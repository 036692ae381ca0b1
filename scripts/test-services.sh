#!/usr/bin/env bash
# What the test suite needs besides Python packages: a Redis at 127.0.0.1:6379, the
# prometheus binary (the dashboard test scrapes the system with a real one) and kubectl
# (the Kubernetes manifests must build with kustomize). Installs them with apt-get where
# they are missing and we are root; otherwise says what to install.
set -euo pipefail

need_apt=()
command -v redis-server >/dev/null || need_apt+=(redis-server)
command -v prometheus >/dev/null || need_apt+=(prometheus)
command -v kubectl >/dev/null || need_apt+=(kubernetes-client)
if ((${#need_apt[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "missing: ${need_apt[*]} (install them with apt-get, as root)" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
    for _ in $(seq 50); do redis-cli -h 127.0.0.1 ping >/dev/null 2>&1 && break; sleep 0.1; done
fi
