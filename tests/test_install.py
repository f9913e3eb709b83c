"""scripts/install.sh into a scratch root (--root): what lands where, with which owner and mode, that a
second run changes nothing, and that uninstall keeps the config and data unless --purge.

The service user is created by the real systemd-sysusers in the scratch root's own passwd and group.
Owners are checked when the tests run as root (CI does); as another user the script cannot chown and
says so, and modes are still checked. The Python package itself is installed from the lock only by the
slow test (it fetches from the package index); the others pass --no-venv. What only a real Pi shows:
systemctl starting the unit, the device groups giving access to /dev/spidev* and /dev/gpiomem, and the
[pi] lock building spidev and RPi.GPIO on ARM.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
from pathlib import Path
from textwrap import dedent

import pytest

from edgegw.keys import load_keys

REPO = Path(__file__).resolve().parents[1]
INSTALL = REPO / "scripts" / "install.sh"
AS_ROOT = os.geteuid() == 0

needs_sysusers = pytest.mark.skipif(shutil.which("systemd-sysusers") is None,
                                    reason="systemd-sysusers is missing (Debian package systemd, which .ci/run installs)")
needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                   reason="systemd-analyze is missing (Debian package systemd, which .ci/run installs)")


@pytest.fixture
def root(tmp_path) -> Path:
    """A scratch root with the base system's users and the dialout group, as Debian has them."""
    r = tmp_path / "root"
    (r / "etc").mkdir(parents=True)
    (r / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (r / "etc" / "group").write_text("root:x:0:\ndialout:x:20:\n")
    return r


def install(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["bash", str(INSTALL), "--root", str(root), *args], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under root with its type, mode, owner, modification time and content."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        body = os.readlink(p) if p.is_symlink() else hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else ""
        out[str(p.relative_to(root))] = (stat.filemode(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns, body)
    return out


def ids(root: Path, name: str, table: str) -> list[str]:
    """The entry of NAME in root's passwd or group, split at the colons."""
    line = next(x for x in (root / "etc" / table).read_text().splitlines() if x.startswith(f"{name}:"))
    return line.split(":")


def assert_owned(root: Path, path: str, mode: int, user: str, group: str) -> None:
    st = (root / path.lstrip("/")).stat()
    assert stat.S_IMODE(st.st_mode) == mode, f"{path}: {oct(st.st_mode)}"
    if AS_ROOT:
        assert (st.st_uid, st.st_gid) == (int(ids(root, user, "passwd")[2]), int(ids(root, group, "group")[2])), path


@needs_sysusers
def test_install_then_again_changes_nothing(root):
    first = install(root, "--no-venv")
    assert "user edgegw and its groups (dialout only)" in first.stdout
    user = ids(root, "edgegw", "passwd")
    assert user[5:] == ["/var/lib/edgegw", "/usr/sbin/nologin"]
    assert "edgegw" in ids(root, "dialout", "group")[3].split(",")

    assert_owned(root, "/etc/edgegw", 0o770, "root", "edgegw")
    assert_owned(root, "/etc/edgegw/gateway.toml", 0o640, "root", "edgegw")
    assert (root / "etc/edgegw/gateway.toml").read_text() == (REPO / "configs/site-example.toml").read_text()
    # The example's broker password file: there, empty, for the service user's eyes only.
    assert_owned(root, "/etc/edgegw/mqtt-password", 0o600, "edgegw", "edgegw")
    assert (root / "etc/edgegw/mqtt-password").read_bytes() == b""
    assert_owned(root, "/var/lib/edgegw", 0o750, "edgegw", "edgegw")
    for path in ["/etc/systemd/system/edgegw.service", "/etc/sysusers.d/edgegw.conf", "/etc/tmpfiles.d/edgegw.conf",
                 "/opt/edgegw/README.md"]:
        assert_owned(root, path, 0o644, "root", "root")
    assert (root / "etc/systemd/system/edgegw.service").read_text() == (REPO / "systemd/edgegw.service").read_text()
    assert os.readlink(root / "usr/local/bin/edgegw") == "/opt/edgegw/.venv/bin/edgegw"
    # What the unit points a maintainer at is there: the README it names, with the section it names.
    unit = (root / "etc/systemd/system/edgegw.service").read_text()
    docs = [line.removeprefix("Documentation=file://") for line in unit.splitlines() if line.startswith("Documentation=")]
    assert docs == ["/opt/edgegw/README.md"]
    assert 'README: "Install on a Raspberry\n# Pi"' in unit
    assert "\n## Install on a Raspberry Pi\n" in (root / docs[0].lstrip("/")).read_text()

    before = snapshot(root)
    second = install(root, "--no-venv")
    assert second.stdout == "edgegw install: nothing to change: already installed from this tree\n"
    assert snapshot(root) == before


@needs_sysusers
def test_an_edited_config_and_secrets_are_kept(root):
    install(root, "--no-venv")
    config = root / "etc/edgegw/gateway.toml"
    config.write_text(config.read_text().replace("kamikawa-gw-03", "shimo-gw-01"))
    (root / "etc/edgegw/mqtt-password").write_text("s3cret\n")
    install(root, "--no-venv")
    assert "shimo-gw-01" in config.read_text()
    assert (root / "etc/edgegw/mqtt-password").read_text() == "s3cret\n"


@needs_sysusers
def test_a_loosened_mode_is_put_back(root):
    install(root, "--no-venv")
    (root / "etc/edgegw/mqtt-password").chmod(0o644)
    again = install(root, "--no-venv")
    assert "mode 600 /etc/edgegw/mqtt-password" in again.stdout
    assert_owned(root, "/etc/edgegw/mqtt-password", 0o600, "edgegw", "edgegw")


@needs_sysusers
@pytest.mark.parametrize(("example", "groups"), [("sx127x", ["spi", "gpio"]), ("e220", ["gpio"]), ("es920lr", [])])
def test_the_radio_decides_the_device_groups(root, example, groups):
    result = install(root, "--no-venv", "--config", str(REPO / "configs" / f"{example}.toml"))
    sysusers = (root / "etc/sysusers.d/edgegw.conf").read_text()
    assert [line.split()[2] for line in sysusers.splitlines() if line.startswith("m ")] == ["dialout", *groups]
    for group in ["dialout", *groups]:
        assert "edgegw" in ids(root, group, "group")[3].split(",")
    assert f"user edgegw and its groups ({' '.join(groups) or 'dialout only'})" in result.stdout


@needs_sysusers
def test_a_radio_changed_in_the_installed_config_takes_effect_on_the_next_run(root):
    install(root, "--no-venv")
    config = root / "etc/edgegw/gateway.toml"
    config.write_text(config.read_text().replace('type = "rylr"', 'type = "sx127x"'))
    again = install(root, "--no-venv")
    assert "wrote /etc/sysusers.d/edgegw.conf" in again.stdout
    assert "edgegw install: done: 2 change(s)" in again.stdout  # the file and the user's groups
    assert all("edgegw" in ids(root, g, "group")[3].split(",") for g in ["spi", "gpio"])


@needs_sysusers
def test_every_secret_the_config_names_is_created_for_the_service_user_only(root, tmp_path):
    config = tmp_path / "gw.toml"
    config.write_text(dedent('''
        gateway_id = "gw"
        data_dir = "/var/lib/edgegw"
        keys_file = "keys.toml"                      # relative: beside the config
        [[sources]]
        type = "rylr"
        name = "lora0"
        port = "/dev/ttyUSB0"
        [[uplinks]]
        type = "mqtt"
        host = "broker.example"
        password_file = "/etc/edgegw/broker-password"
        [[uplinks]]
        type = "ngsi-v2"
        name = "orion"
        url = "https://orion.example"
        token_file = "/etc/edgegw/orion-token"
        [[uplinks]]
        type = "mqtt"
        name = "elsewhere"
        host = "b2.example"
        password_file = "/srv/secrets/b2"            # the installer's own arrangement: left alone
        '''))
    install(root, "--no-venv", "--config", str(config))
    for name in ["broker-password", "orion-token", "keys.toml"]:
        assert_owned(root, f"/etc/edgegw/{name}", 0o600, "edgegw", "edgegw")
    assert not (root / "srv").exists()
    assert load_keys(root / "etc/edgegw/keys.toml") == {}  # an empty keys file the gateway accepts


@needs_sysusers
def test_without_users_nothing_is_chowned(root):
    result = install(root, "--no-venv", "--no-users")
    assert "(--no-users): owners are left as they are" in result.stdout
    assert "edgegw" not in (root / "etc/passwd").read_text()
    assert (root / "etc/edgegw").stat().st_uid == os.geteuid()
    assert_owned(root, "/etc/edgegw/mqtt-password", 0o600, "root", "root")  # mode only: no such user


@needs_sysusers
def test_uninstall_keeps_config_and_data_unless_purge(root):
    install(root, "--no-venv")
    (root / "var/lib/edgegw/edgegw.db").write_bytes(b"readings")
    result = install(root, "--uninstall")
    assert "kept /etc/edgegw (--purge removes it)" in result.stdout
    for gone in ["opt/edgegw", "etc/systemd/system/edgegw.service", "etc/sysusers.d/edgegw.conf",
                 "etc/tmpfiles.d/edgegw.conf", "usr/local/bin/edgegw"]:
        assert not (root / gone).exists() and not (root / gone).is_symlink(), gone
    assert (root / "var/lib/edgegw/edgegw.db").read_bytes() == b"readings"
    assert (root / "etc/edgegw/gateway.toml").exists()
    assert install(root, "--uninstall").stdout.endswith("done: 0 change(s)\n")

    install(root, "--no-venv")  # a reinstall finds the kept config and data as they were
    assert (root / "var/lib/edgegw/edgegw.db").read_bytes() == b"readings"
    purged = install(root, "--uninstall", "--purge")
    assert "purged /var/lib/edgegw" in purged.stdout
    assert not (root / "etc/edgegw").exists() and not (root / "var/lib/edgegw").exists()
    assert "edgegw" in (root / "etc/passwd").read_text()  # the user stays (see the script's message)


def test_purge_without_uninstall_is_refused(root):
    result = subprocess.run(["bash", str(INSTALL), "--root", str(root), "--purge"], capture_output=True, text=True)
    assert result.returncode == 64
    assert "--purge goes with --uninstall" in result.stderr
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*")) == ["etc", "etc/group", "etc/passwd"]


def verify_unit(root: Path) -> subprocess.CompletedProcess[str]:
    """systemd-analyze verify of the installed unit, inside root (with the host's system units beside it,
    for the targets it names)."""
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True, dirs_exist_ok=True)
    # The base system's kill, which the unit's ExecReload runs.
    (root / "bin").mkdir(exist_ok=True)
    shutil.copy2("/bin/kill", root / "bin" / "kill")
    return subprocess.run(["systemd-analyze", "verify", f"--root={root}", "/etc/systemd/system/edgegw.service"],
                          capture_output=True, text=True, timeout=60)


@needs_sysusers
@needs_analyze
def test_installed_unit_verifies_but_for_the_program_left_out(root):
    install(root, "--no-venv")
    result = verify_unit(root)
    # Without the venv (--no-venv) the program is missing; systemd finds nothing else to say.
    lines = set((result.stdout + result.stderr).splitlines())
    assert lines == {"edgegw.service: Command /opt/edgegw/.venv/bin/edgegw is not executable: No such file or directory"}


@pytest.mark.slow
@needs_sysusers
@needs_analyze
def test_full_install_from_the_lock(root):
    """The whole install, the venv from locks/runtime.txt with its hashes (fetched from the package index)."""
    first = install(root)
    assert "installed edgegw 0.1.0 and runtime.txt in /opt/edgegw/.venv" in first.stdout
    venv = root / "opt/edgegw/.venv"
    frozen = subprocess.run([venv / "bin/python", "-m", "pip", "freeze", "--all"], capture_output=True, text=True,
                            check=True).stdout.splitlines()
    locked = [line.split(";")[0].rstrip(" \\") for line in (REPO / "locks/runtime.txt").read_text().splitlines()
              if "==" in line]  # e.g. "cffi==2.1.1 ; platform_python_implementation != 'PyPy' \\"
    for pin in locked:
        assert pin.lower().replace("_", "-") in {f.lower().replace("_", "-") for f in frozen}, pin
    assert not any(f.startswith(("pytest", "hypothesis", "mypy")) for f in frozen)  # no test tools on a gateway
    check = subprocess.run([venv / "bin/edgegw", "config", "check", REPO / "configs/es920lr.toml"], capture_output=True,
                           text=True)
    assert check.returncode == 0 and ": OK: gateway es920-gw" in check.stdout, check.stderr  # the bundled drivers too

    result = verify_unit(root)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")

    before = snapshot(root)
    assert install(root).stdout == "edgegw install: nothing to change: already installed from this tree\n"
    assert snapshot(root) == before
    install(root, "--uninstall", "--purge")
    assert not (root / "opt/edgegw").exists()
