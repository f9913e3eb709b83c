#!/usr/bin/env bash
# Install edgegw as a systemd service on Debian 12 / Raspberry Pi OS, from this source tree:
#
#   sudo scripts/install.sh                    install, or bring an installation up to this tree
#   sudo scripts/install.sh --uninstall        remove the program and the service, keep config and data
#   sudo scripts/install.sh --uninstall --purge   ... and /etc/edgegw and /var/lib/edgegw too
#
# What goes where:
#   /opt/edgegw/.venv             the package, its dependencies from locks/*.txt (pinned, hashes checked)
#   /opt/edgegw/README.md         the unit's Documentation=
#   /usr/local/bin/edgegw         -> /opt/edgegw/.venv/bin/edgegw
#   /etc/edgegw/                  root:edgegw 0770 (the service user writes keys.toml via `edgegw keys new`)
#   /etc/edgegw/gateway.toml      root:edgegw 0640, from configs/site-example.toml (or --config), never overwritten
#   secrets the config names      edgegw:edgegw 0600 (password_file, token_file, keys_file under /etc/edgegw), created empty
#   /var/lib/edgegw/              edgegw:edgegw 0750, the database
#   /etc/systemd/system/edgegw.service, /etc/sysusers.d/edgegw.conf, /etc/tmpfiles.d/edgegw.conf
# The service user edgegw is in dialout (serial modules), and in spi and gpio when the config's
# radio needs them (sx127x: spi and gpio; e220: gpio for its mode pins); those radios also get the
# [pi] extra (locks/pi.txt). The service is not enabled or started: edit the config first (README).
#
# Running it again changes nothing unless this tree, the lock or the config's radio changed.
#
# For tests, every path is under --root DIR (default /): then nothing outside DIR is touched, systemctl
# is not called, and user creation (systemd-sysusers --root) writes DIR/etc/passwd. (Not a way to build
# an image: the venv's scripts would name DIR in their first line.)
# --no-users skips creating the user; --no-venv skips the Python package (it needs the package index);
# --pi installs the [pi] extra whatever the config's radio.
set -euo pipefail

SRC=$(cd "$(dirname "$0")/.." && pwd)
ROOT=/
CONFIG_FROM=$SRC/configs/site-example.toml
USERS=1 VENV_STEP=1 PI=0 UNINSTALL=0 PURGE=0
usage() { sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; echo "options: --root DIR  --config FILE  --pi  --no-users  --no-venv  --uninstall [--purge]"; }
while [ $# -gt 0 ]; do
    case $1 in
        --root) ROOT=$2; shift ;;
        --config) CONFIG_FROM=$(realpath "$2"); shift ;;
        --pi) PI=1 ;;
        --no-users) USERS=0 ;;
        --no-venv) VENV_STEP=0 ;;
        --uninstall) UNINSTALL=1 ;;
        --purge) PURGE=1 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install.sh: unknown option $1" >&2; usage >&2; exit 64 ;;
    esac
    shift
done
[ "$PURGE" = 0 ] || [ "$UNINSTALL" = 1 ] || { echo "install.sh: --purge goes with --uninstall" >&2; exit 64; }
ROOT=$(realpath -m "$ROOT")
R=${ROOT%/}  # prefix for every path: "" for the real system
REAL=0; [ -z "$R" ] && REAL=1
if [ "$REAL" = 1 ] && [ "$(id -u)" != 0 ]; then
    echo "install.sh: run it as root (sudo $0 $*)" >&2; exit 1
fi

OPT=/opt/edgegw ETC=/etc/edgegw STATE=/var/lib/edgegw
UNIT=/etc/systemd/system/edgegw.service SYSUSERS=/etc/sysusers.d/edgegw.conf TMPFILES=/etc/tmpfiles.d/edgegw.conf
LINK=/usr/local/bin/edgegw
CHANGED=0 WARNED_OWNER=
say() { echo "edgegw install: $*"; }
changed() { CHANGED=$((CHANGED + 1)); say "$*"; }
systemd_running() { [ "$REAL" = 1 ] && [ -d /run/systemd/system ]; }

# The numeric ids of the service user in ROOT's own passwd/group (not the host's, when ROOT is a scratch tree).
uid_of() { awk -F: -v n="$1" '$1 == n { print $3 }' "$R/etc/passwd" 2>/dev/null; }
gid_of() { awk -F: -v n="$1" '$1 == n { print $3 }' "$R/etc/group" 2>/dev/null; }

# own PATH USER GROUP MODE: set what differs, and only that (a second run must change nothing).
own() {
    local path=$1 user=$2 group=$3 mode=$4 uid gid
    if [ "$(stat -c %a "$R$path")" != "$mode" ]; then chmod "$mode" "$R$path"; changed "mode $mode $path"; fi
    uid=$(uid_of "$user"); gid=$(gid_of "$group")
    if [ -z "$uid" ] || [ -z "$gid" ]; then return; fi  # no user yet (--no-users): said once, below
    if [ "$(stat -c %u:%g "$R$path")" != "$uid:$gid" ]; then
        if [ "$(id -u)" = 0 ]; then chown "$uid:$gid" "$R$path"; changed "owner $user:$group $path"
        elif [ -z "$WARNED_OWNER" ]; then WARNED_OWNER=1; say "not root: owners are left as they are" >&2; fi
    fi
}
dir() { [ -d "$R$1" ] || { mkdir -p "$R$1"; changed "created $1"; }; own "$@"; }
# put PATH USER GROUP MODE < content: write only when the content differs.
put() {
    local tmp; tmp=$(mktemp); cat > "$tmp"
    if [ -f "$R$1" ] && cmp -s "$tmp" "$R$1"; then rm -f "$tmp"
    else mkdir -p "$(dirname "$R$1")"; install -m "$4" "$tmp" "$R$1"; rm -f "$tmp"; changed "wrote $1"; fi
    own "$@"
}
# seed PATH USER GROUP MODE < content: create once, never overwrite what an installer edited.
seed() { if [ -e "$R$1" ]; then cat > /dev/null; own "$@"; else put "$@"; fi; }

uninstall() {
    if systemd_running && [ -e "$UNIT" ]; then
        if systemctl disable --now edgegw; then changed "stopped and disabled edgegw.service"
        else say "could not stop and disable edgegw.service: removing its files anyway"; fi
    fi
    local p
    for p in "$UNIT" "$SYSUSERS" "$TMPFILES" "$LINK"; do
        if [ -e "$R$p" ] || [ -L "$R$p" ]; then rm -f "$R$p"; changed "removed $p"; fi
    done
    if [ -d "$R$OPT" ]; then rm -rf "${R:?}$OPT"; changed "removed $OPT"; fi
    if systemd_running; then systemctl daemon-reload; fi
    if [ "$PURGE" = 1 ]; then
        for p in "$ETC" "$STATE"; do
            if [ -d "$R$p" ]; then rm -rf "${R:?}$p"; changed "purged $p"; fi
        done
        say "the user edgegw is kept (files elsewhere may still be owned by its uid); remove it with: userdel edgegw"
    else
        for p in "$ETC" "$STATE"; do [ -d "$R$p" ] && say "kept $p (--purge removes it)"; done
    fi
    return 0
}

if [ "$UNINSTALL" = 1 ]; then
    uninstall
    say "done: $CHANGED change(s)"
    exit 0
fi

for tool in python3 awk cmp install realpath; do
    command -v "$tool" >/dev/null || { echo "install.sh: $tool is missing" >&2; exit 1; }
done
python3 -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null \
    || { echo "install.sh: edgegw needs Python 3.11 or newer (Debian 12 / Raspberry Pi OS bookworm)" >&2; exit 1; }
# apt_get WHY PACKAGE...: Debian packages the install needs; installed on the real system, asked for otherwise.
apt_get() {
    local why=$1; shift
    if [ "$REAL" = 0 ]; then echo "install.sh: $why: apt-get install $*" >&2; exit 1; fi
    say "installing $* ($why)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
if [ "$VENV_STEP" = 1 ] && ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    apt_get "Python's venv module is missing" python3-venv
fi

# The config the gateway will run: the installed one if there is one, else the one it is made from.
CONFIG=$R$ETC/gateway.toml
[ -f "$CONFIG" ] || CONFIG=$CONFIG_FROM
[ -f "$CONFIG" ] || { echo "install.sh: no config at $CONFIG" >&2; exit 1; }
# What the config asks of the system: the radios' device groups and extra, and the secret files it names
# (only those under /etc/edgegw: a path elsewhere is the installer's own arrangement).
NEEDS=$(python3 - "$CONFIG" "$ETC" <<'PY'
import sys, tomllib
from pathlib import PurePosixPath as P
with open(sys.argv[1], "rb") as f:
    config = tomllib.load(f)
etc = P(sys.argv[2])
types = {s.get("type") for s in config.get("sources", []) if isinstance(s, dict)}
groups = (["spi", "gpio"] if "sx127x" in types else []) + (["gpio"] if "e220" in types and "sx127x" not in types else [])
print("groups", *groups)
print("pi", int(bool(types & {"sx127x", "e220"})))
secrets = [config.get("keys_file")] + [u.get(k) for u in config.get("uplinks", []) if isinstance(u, dict)
                                        for k in ("password_file", "token_file")]
for s in filter(None, secrets):
    path = etc / s  # a relative path is relative to the config's folder, as edgegw reads it
    if etc in path.parents:
        print("secret", "keys" if s == config.get("keys_file") else "plain", path)
PY
)
read -r -a GROUPS_NEEDED <<< "$(awk '$1 == "groups" { $1 = ""; print }' <<< "$NEEDS")"
[ "$(awk '$1 == "pi" { print $2 }' <<< "$NEEDS")" = 1 ] && PI=1

# (Content goes to put and seed by redirection, never a pipe: a pipe would run them in a subshell,
# and their changes would go uncounted.)

# 1. The service user, and its groups (sysusers.d: systemd recreates it the same way at every boot).
sysusers_conf() {
    cat "$SRC/systemd/edgegw.sysusers.conf"
    local g; for g in "${GROUPS_NEEDED[@]}"; do
        case $g in
            spi) echo "# spi: the SX127x chip's /dev/spidev*" ;;
            gpio) echo "# gpio: the radio's pins (/dev/gpiomem, /dev/gpiochip*)" ;;
        esac
        echo "m edgegw $g"
    done
}
put "$SYSUSERS" root root 644 < <(sysusers_conf)
in_group() {
    awk -F: -v g="$1" '$1 == g { n = split($4, m, ","); for (i = 1; i <= n; i++) if (m[i] == "edgegw") found = 1 }
                       END { exit !found }' "$R/etc/group" 2>/dev/null
}
users_done() {
    [ -n "$(uid_of edgegw)" ] || return 1
    local g; for g in dialout "${GROUPS_NEEDED[@]}"; do in_group "$g" || return 1; done
}
# systemd-sysusers rewrites nothing that is right, but it touches /etc: run it only when something is missing.
if [ "$USERS" = 1 ] && ! users_done; then
    command -v systemd-sysusers >/dev/null || { echo "install.sh: systemd-sysusers is missing (package systemd)" >&2; exit 1; }
    if [ "$REAL" = 1 ]; then systemd-sysusers "$SYSUSERS"; else systemd-sysusers --root="$ROOT" "$R$SYSUSERS"; fi
    changed "user edgegw and its groups (${GROUPS_NEEDED[*]:-dialout only})"
fi
[ -n "$(uid_of edgegw)" ] || say "no user edgegw in $R/etc/passwd (--no-users): owners are left as they are"

# 2. Config, secrets and state.
dir "$ETC" root edgegw 770
if [ -f "$R$ETC/gateway.toml" ] && ! cmp -s "$CONFIG_FROM" "$R$ETC/gateway.toml"; then
    [ "$CONFIG_FROM" = "$SRC/configs/site-example.toml" ] || say "kept $ETC/gateway.toml as it is: not replaced by $CONFIG_FROM"
fi
seed "$ETC/gateway.toml" root edgegw 640 < "$CONFIG_FROM"
secret_body() {  # a keys file starts as an empty [keys] table; a password or token file empty
    [ "$1" != keys ] || printf '# edgegw device keys: add with `sudo -u edgegw edgegw keys new DEVICE` (README).\n[keys]\n'
}
while read -r kind path; do
    seed "$path" edgegw edgegw 600 < <(secret_body "$kind")
done < <(awk '$1 == "secret" { print $2, $3 }' <<< "$NEEDS")
dir "$STATE" edgegw edgegw 750

# 3. The program: a venv from the lock (hashes checked), then edgegw itself, built from this tree.
dir "$OPT" root root 755
put "$OPT/README.md" root root 644 < "$SRC/README.md"
if [ "$VENV_STEP" = 1 ]; then
    LOCK=$SRC/locks/runtime.txt; [ "$PI" = 1 ] && LOCK=$SRC/locks/pi.txt
    VENV=$R$OPT/.venv
    # What the venv was made from: the lock and every file of the package. Unchanged: nothing to do.
    stamp=$( (cat "$LOCK" "$SRC/locks/build.txt";
              cd "$SRC" && find pyproject.toml edgegw drivers -type f ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 \
                  | sort -z | xargs -0 sha256sum) | sha256sum | cut -d' ' -f1)
    if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$VENV/.edgegw-installed" 2>/dev/null)" != "$stamp" ]; then
        [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
        # Only the index and the lock decide what is installed: no pip.conf, no PIP_* variables (Raspberry Pi
        # OS points pip at a second index whose wheels' hashes are not the lock's).
        pip=(env PIP_CONFIG_FILE=/dev/null "$VENV/bin/pip" --isolated --disable-pip-version-check)
        if [ "$PI" = 1 ] && ! { command -v gcc >/dev/null && [ -e "$(python3 -c 'import sysconfig; print(sysconfig.get_path("include"))')/Python.h" ]; }; then
            apt_get "the [pi] extra builds spidev and RPi.GPIO" gcc python3-dev
        fi
        "${pip[@]}" install --quiet --require-hashes -r "$SRC/locks/build.txt" -r "$LOCK"
        # Built from a copy: the source tree (perhaps a user's clone) gets no build/ or egg-info owned by root.
        build=$(mktemp -d)
        (cd "$SRC" && tar -cf - --exclude=__pycache__ pyproject.toml README.md edgegw drivers) | tar -xf - -C "$build"
        "${pip[@]}" install --quiet --no-deps --no-build-isolation --no-index --force-reinstall "$build"
        rm -rf "$build"
        echo "$stamp" > "$VENV/.edgegw-installed"
        changed "installed edgegw $("$VENV/bin/python" -c 'import edgegw; print(edgegw.__version__)') and $(basename "$LOCK") in $OPT/.venv"
    fi
fi
mkdir -p "$R$(dirname "$LINK")"
if [ "$(readlink "$R$LINK" 2>/dev/null)" != "$OPT/.venv/bin/edgegw" ]; then
    ln -sfn "$OPT/.venv/bin/edgegw" "$R$LINK"; changed "linked $LINK"
fi

# 4. The service (not enabled or started here: the config needs editing first).
put "$UNIT" root root 644 < "$SRC/systemd/edgegw.service"
put "$TMPFILES" root root 644 < "$SRC/systemd/edgegw.tmpfiles.conf"
if systemd_running && [ "$CHANGED" != 0 ]; then
    systemd-tmpfiles --create "$TMPFILES"
    systemctl daemon-reload
fi

if [ "$CHANGED" = 0 ]; then
    say "nothing to change: already installed from this tree"
else
    say "done: $CHANGED change(s)"
    # An upgrade does not restart a running gateway by itself: the installer chooses the moment.
    if systemd_running && systemctl is-active --quiet edgegw; then
        say "edgegw is running what was installed before: sudo systemctl restart edgegw"
    fi
fi
if [ "$REAL" = 1 ] && ! systemctl is-enabled --quiet edgegw 2>/dev/null; then
    echo 'Next (README, "Install on a Raspberry Pi"):'
    echo "  sudoedit $ETC/gateway.toml                the serial port, radio, devices, uplinks"
    awk '$1 == "secret" && $2 == "plain" { printf "  sudoedit %-32s the secret itself\n", $3 }' <<< "$NEEDS"
    echo "  sudo $SRC/scripts/install.sh    again, if the radio type or a secret file changed"
    echo "  sudo -u edgegw edgegw keys new DEVICE     for each sensor that authenticates its frames"
    echo "  sudo -u edgegw edgegw config check"
    echo "  sudo systemctl enable --now edgegw"
fi
