#!/usr/bin/env bash
# Regenerate the lock files scripts/install.sh installs from (pinned versions with their hashes),
# so that two gateways installed a month apart run the same libraries:
#   locks/runtime.txt  the daemon's dependencies (pyproject.toml [project] dependencies)
#   locks/pi.txt       the same plus the [pi] extra (SX127x on SPI, E220 mode pins)
#   locks/build.txt    setuptools, to build edgegw itself
# Existing pins are kept; `scripts/lock.sh --upgrade` moves every one to the newest release.
# Needs uv (pip install uv). Python 3.11 is Debian 12's / Raspberry Pi OS's; --universal keeps the
# hashes of every platform's wheels (the Pi is aarch64 or armv7l, the developer's machine x86_64).
set -euo pipefail
cd "$(dirname "$0")/.."
uv=${UV:-uv}
common=(--generate-hashes --python-version 3.11 --universal --quiet "$@")
"$uv" pip compile pyproject.toml "${common[@]}" -o locks/runtime.txt
"$uv" pip compile pyproject.toml --extra pi "${common[@]}" -o locks/pi.txt
"$uv" pip compile locks/build.in "${common[@]}" -o locks/build.txt
