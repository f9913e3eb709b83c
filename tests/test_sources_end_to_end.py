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
        daemon.wait_committed(3, timeout=30)

        def delivered_and_rejected() -> dict | None:
            s = daemon.status()
            if s.get("outbox", {}).get("delivered", 0) >= 1 and s.get("rejects", {}).get("by_reason"):
                return s
            return None
        status = wait_until(delivered_and_rejected, 30, f"a delivered batch and a reject ({daemon.log_tail()})")
        assert {d["id"] for d in status["devices"] if d["readings"]} >= {"river-01"}
        assert "Traceback" not in daemon.log.read_text()
    finally:
        assert daemon.stop() == 0


@pytest.mark.parametrize("module", ["es920lr", "im920sl"])
def test_simulate_command_emulates_each_serial_module(tmp_path, module):
    from click.testing import CliRunner

    from edgegw.cli import cli

    result = CliRunner().invoke(cli, ["simulate", "--module", module, "--field", str(REPO / "configs" / "jp-field.toml"),
                                      "--link", str(tmp_path / "tty"), "--duration", "0.5", "--seed", "1"])
    assert result.exit_code == 0, result.output
    assert f"emulated {module} module at" in result.output
    assert not (tmp_path / "tty").exists()  # unplugged at the end
