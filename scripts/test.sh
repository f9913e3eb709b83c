#!/usr/bin/env bash
# Set up and run the tests on a fresh Debian 12 machine: the system tools the tests use (installed with
# apt-get, through sudo when not root, only those missing), a venv in .venv with edgegw and its test
# tools, then pytest. Arguments go to pytest:
#   scripts/test.sh                              the whole suite but the long runs
#   scripts/test.sh -m slow                      the long soak and fault-injection runs
#   scripts/test.sh tests/test_install.py -x     one file
# .ci/run calls this same script.
set -euo pipefail
cd "$(dirname "$0")/.."

# mosquitto: the real broker the MQTT tests start; faketime: clock steps; openssl: a TLS test server's
# certificates; strace: the power-cut tests; gcc: the firmware encoder; systemd: systemd-sysusers and
# systemd-analyze for the install tests; tmux: the terminal edgegw monitor is tested in; rabbitmq-server: the
# clustered broker of the town's slow test; python3-venv: the venv below.
PACKAGES=(mosquitto faketime openssl strace gcc systemd tmux rabbitmq-server python3-venv)
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null | grep -q '^ii' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    sudo=(); [ "$(id -u)" = 0 ] || sudo=(sudo)
    echo "test.sh: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
    .venv/bin/pip install -q --upgrade pip >/dev/null
fi
.venv/bin/pip install -q -e '.[test]'

exec .venv/bin/python -m pytest "$@"
