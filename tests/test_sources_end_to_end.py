"""Every module family end to end: the daemon runs each example config (configs/<type>.toml) against
its emulator (``simulate``), and the field's readings are committed and delivered, its garbage counted."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.gateway import Daemon, wait_until

REPO = Path(__file__).resolve().parent.parent
FAULTY_FIELD = (REPO / "configs" / "jp-field.toml").read_text() + "\n[faults]\ngarbage = 0.5\n"


@pytest.mark.parametrize("kind", ["es920lr", "im920sl", "e220", "sx127x"])
def test_example_config_runs_on_its_emulator(tmp_path, kind):
    if kind == "sx127x":
        pytest.importorskip("SX127x", reason="pyLoRa (the [pi] extra) is not installed")
    text = (REPO / "configs" / f"{kind}.toml").read_text()
    text = re.sub(r'(?m)^data_dir = .*$', 'data_dir = "data"', text)
    (tmp_path / "gateway.toml").write_text(text)
    (tmp_path / "jp-field.toml").write_text(FAULTY_FIELD)
    daemon = Daemon(tmp_path / "gateway.toml").start()
    try:
        daemon.wait_receiving()

        # Half the field's frames are garbage instead (FAULTY_FIELD), drawn at random: about one frame
        # in 4 s, so 3 readings take 24 s on average and the 30 s this waited once failed a CI run.
        # 120 s is ~30 frames: fewer than 3 good ones, or no garbage, has odds below 1e-6.
        def delivered_rejected_and_river() -> dict | None:
            daemon.check_alive()
            s = daemon.status()
            devices = s.get("devices", [])
            heard = {d["id"] for d in devices if d["readings"]}
            if (sum(d["readings"] for d in devices) >= 3 and s.get("outbox", {}).get("delivered", 0) >= 1
                    and s.get("rejects", {}).get("by_reason") and "river-01" in heard):
                return s
            return None
        wait_until(delivered_rejected_and_river, 120,
                   f"3 readings committed, a delivered batch, a reject and a river reading ({daemon.log_tail()})")
        assert "Traceback" not in daemon.log.read_text()
    finally:
        assert daemon.stop() == 0


@pytest.mark.parametrize("module", ["es920lr", "im920sl", "e220"])
def test_simulate_command_emulates_each_serial_module(tmp_path, module):
    from click.testing import CliRunner

    from edgegw.cli import cli

    result = CliRunner().invoke(cli, ["simulate", "--module", module, "--field", str(REPO / "configs" / "jp-field.toml"),
                                      "--link", str(tmp_path / "tty"), "--duration", "0.5", "--seed", "1"])
    assert result.exit_code == 0, result.output
    assert f"emulated {module} module at" in result.output
    assert not (tmp_path / "tty").exists()  # unplugged at the end


def test_simulate_e220_drives_a_daemon_reading_it_through_the_example_config(tmp_path):
    """`edgegw simulate --module e220` in its own process, the daemon on its pty with configs/e220.toml
    (port for simulate, and mode_pins = false: no process can switch the other's M0/M1)."""
    import signal
    import subprocess
    import sys

    link = tmp_path / "ttyE220"
    text = (REPO / "configs" / "e220.toml").read_text()
    text = re.sub(r'(?m)^data_dir = .*$', 'data_dir = "data"', text)
    text = re.sub(r'(?m)^simulate = .*$', f'port = "{link}"\nmode_pins = false', text)
    (tmp_path / "gateway.toml").write_text(text)
    with open(tmp_path / "simulate.log", "wb") as log:
        simulate = subprocess.Popen([sys.executable, "-m", "edgegw", "simulate", "--module", "e220", "--field",
                                     str(REPO / "configs" / "jp-field.toml"), "--link", str(link), "--seed", "1",
                                     "--speed", "4"], stdout=log, stderr=log)
    daemon = None
    try:
        wait_until(link.exists, 20, "the emulated module's pty")
        daemon = Daemon(tmp_path / "gateway.toml").start()
        daemon.wait_receiving()
        daemon.wait_committed(3, timeout=30)
        devices = {d["id"]: d for d in daemon.status()["devices"]}
        assert devices["river-01"]["readings"] >= 1, devices
        assert "Traceback" not in daemon.log.read_text()
    finally:
        if daemon is not None:
            assert daemon.stop() == 0
        simulate.send_signal(signal.SIGINT)  # by PID, as Ctrl-C: the emulator unplugs and reports
        simulate.wait(10)
    report = (tmp_path / "simulate.log").read_text()
    assert "emulated e220 module at" in report
    sent = re.search(r"frames on the air (\d+), lines to the host (\d+)", report)
    assert sent is not None and int(sent.group(2)) >= 3, report
    assert not link.exists()  # unplugged


def test_simulate_with_a_config_seals_the_keyed_sensors_frames(tmp_path):
    """Standalone `edgegw simulate -c` gives the virtual sensors the config's keys, as the daemon's own
    simulation does: a keyed river gauge's frames are accepted, not refused as plain."""
    import signal
    import subprocess
    import sys

    from edgegw.keys import new_key

    link = tmp_path / "ttyRYLR"
    (tmp_path / "gateway.toml").write_text(
        f'gateway_id = "gw"\ndata_dir = "data"\nkeys_file = "keys.toml"\n'
        f'[[sources]]\ntype = "rylr"\nname = "lora0"\nport = "{link}"\n'
        '[[devices]]\nid = "river-01"\naddress = 21\ndriver = "water_level"\ninterval = "5s"\n')
    new_key(tmp_path / "keys.toml", "river-01")
    with open(tmp_path / "simulate.log", "wb") as log:
        simulate = subprocess.Popen([sys.executable, "-m", "edgegw", "simulate", "--field", str(REPO / "configs" / "jp-field.toml"),
                                     "--link", str(link), "--seed", "1", "--speed", "4", "-c", str(tmp_path / "gateway.toml")],
                                    stdout=log, stderr=log)
    daemon = None
    try:
        wait_until(link.exists, 20, "the emulated module's pty")
        daemon = Daemon(tmp_path / "gateway.toml").start()
        daemon.wait_receiving()
        daemon.wait_committed(2, timeout=30)  # only the river's: the trap (address 17) is not configured
        status = daemon.status()
        assert set(status["rejects"]["by_reason"]) <= {"unknown_device"}, status["rejects"]
    finally:
        if daemon is not None:
            assert daemon.stop() == 0
        simulate.send_signal(signal.SIGINT)
        simulate.wait(10)


def test_simulate_refuses_an_spi_chip_and_says_what_to_do(tmp_path):
    from click.testing import CliRunner

    from edgegw.cli import cli

    result = CliRunner().invoke(cli, ["simulate", "--module", "sx127x", "--field", str(REPO / "configs" / "jp-field.toml"),
                                      "--link", str(tmp_path / "tty")])
    assert result.exit_code == 1
    assert result.stderr == (
        "Error: 'sx127x' is not a serial module: no pseudo-terminal can stand in for it. Let the daemon emulate it"
        ' instead: in its [[sources]] entry, set simulate = "FIELD.toml" (a field file, e.g. "jp-field.toml") in'
        " place of the hardware; see configs/sx127x.toml\n")
    assert not (tmp_path / "tty").exists()
