"""The edgegw command through click's CliRunner: exit codes, and what lands on stdout vs stderr.

Click >= 8.2 (installed: 8.4): CliRunner always keeps stderr apart; ``result.stdout`` is stdout only,
``result.stderr`` is stderr only and ``result.output`` is both, interleaved as a terminal shows them.
"""

from __future__ import annotations

import json
from pathlib import Path
from textwrap import dedent

import pytest
from click.testing import CliRunner

from edgegw.cli import cli
from edgegw.cli.common import EXIT_CONFIG
from tests.test_config import THREE_MISTAKE_PROBLEMS as BROKEN_PROBLEMS
from tests.test_config import THREE_MISTAKES

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "demo.toml"

BROKEN = THREE_MISTAKES  # the same three mistakes, seen through the CLI


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def broken(tmp_path) -> Path:
    path = tmp_path / "broken.toml"
    path.write_text(dedent(BROKEN), encoding="utf-8")
    return path


def assert_lists_broken_problems(result, path: Path) -> None:
    assert result.exit_code == EXIT_CONFIG == 2, result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0] == f"3 problem(s) in {path}:"
    assert sorted(lines[1:]) == sorted(f"  {path}: {p}" for p in BROKEN_PROBLEMS)


# -- config check -----------------------------------------------------------------------------------

def test_config_check_demo_ok(runner):
    result = runner.invoke(cli, ["config", "check", str(DEMO)])
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    assert result.stdout == (
        f"{DEMO}: OK: gateway demo-gw, 1 source(s), 3 device(s), uplinks: file (file), sigfox (sigfox), "
        f"data in {REPO / 'data' / 'demo'}\n"
        "not authenticated (anyone in radio range can send as them): river-kamo-bridge, paddy-07;"
        " see edgegw keys new\n"
    )


def test_config_check_broken_lists_every_problem(runner, broken):
    result = runner.invoke(cli, ["config", "check", str(broken)])
    assert_lists_broken_problems(result, broken)
    assert "OK" not in result.output


def test_config_check_missing_file(runner, tmp_path):
    path = tmp_path / "absent.toml"
    result = runner.invoke(cli, ["config", "check", str(path)])
    assert result.exit_code == 2
    assert result.stderr == f"1 problem(s) in {path}:\n  {path}: file not found\n"


def test_config_check_invalid_toml(runner, tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('gateway_id = "gw"\n[[sources]\n')
    result = runner.invoke(cli, ["config", "check", str(path)])
    assert result.exit_code == 2
    assert f"  {path}: not valid TOML: " in result.stderr
    assert "line 2" in result.stderr


# -- drivers list -----------------------------------------------------------------------------------

def test_drivers_list_bundled(runner):
    result = runner.invoke(cli, ["drivers", "list"])
    assert result.exit_code == 0, result.output
    heads = [line.split()[0] for line in result.stdout.splitlines() if not line.startswith(" ")]
    assert heads == ["trap", "water_level"]
    assert "trap  (bundled:trap)  wildlife-trap sensor" in result.stdout
    assert "state" in result.stdout and "armed|sprung" in result.stdout
    level = next(line for line in result.stdout.splitlines() if line.strip().startswith("level "))
    assert level.split() == ["level", "mm", "0..10000"]


def test_drivers_list_with_config_adds_layouts(runner):
    result = runner.invoke(cli, ["drivers", "list", "-c", str(DEMO)])
    assert result.exit_code == 0, result.output
    heads = [line.split()[0] for line in result.stdout.splitlines() if not line.startswith(" ")]
    assert heads == ["paddy", "trap", "water_level"]
    assert "paddy  (config [[layouts]])  paddy water depth and temperature (declarative)" in result.stdout
    depth = next(line for line in result.stdout.splitlines() if line.strip().startswith("depth "))
    assert depth.split() == ["depth", "cm", "0..30"]
    assert "fcnt" not in result.stdout  # the counter is not a value


def test_drivers_list_json(runner):
    result = runner.invoke(cli, ["drivers", "list", "--json", "-c", str(DEMO)])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    by_name = {r["name"]: r for r in rows}
    assert sorted(by_name) == ["paddy", "trap", "water_level"]
    assert by_name["trap"]["origin"] == "bundled:trap"
    assert by_name["trap"]["values"]["state"]["choices"] == ["armed", "sprung"]
    assert by_name["trap"]["values"]["battery"] == {"unit": "V", "min": 0.0, "max": 4.5, "choices": []}
    assert by_name["paddy"]["origin"] == "config [[layouts]]"
    assert list(by_name["paddy"]["values"]) == ["depth", "water_temperature", "battery"]
    assert by_name["paddy"]["values"]["water_temperature"] == {"unit": "Cel", "min": -10, "max": 45, "choices": []}


def test_drivers_list_with_broken_config(runner, broken):
    result = runner.invoke(cli, ["drivers", "list", "-c", str(broken)])
    assert_lists_broken_problems(result, broken)


# -- decode -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("payload", ["01010CE4002A", "0101 0CE4 002A", "01 01 0c e4 00 2a"])
def test_decode_trap(runner, payload):
    result = runner.invoke(cli, ["decode", "--driver", "trap", payload])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "driver": "trap",
        "counter": 42,
        "values": {"state": "sprung", "tamper": False, "battery": 3.3},
        "units": {"battery": "V"},
    }


def test_decode_trap_armed_with_tamper(runner):
    result = runner.invoke(cli, ["decode", "--driver", "trap", "01020BB8FFFF"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["values"] == {"state": "armed", "tamper": True, "battery": 3.0}
    assert out["counter"] == 65535


def test_decode_water_level(runner):
    result = runner.invoke(cli, ["decode", "--driver", "water_level", "0104D208FC0DAC0100"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["values"] == {"level": 1234, "water_temperature": 23.0, "battery": 3.5}
    assert out["counter"] == 256
    assert out["units"] == {"level": "mm", "water_temperature": "Cel", "battery": "V"}


def test_decode_layout_driver_needs_its_config(runner):
    payload = "0064092E96" + "0007"  # depth 100*0.1, 23.50 Cel, 150*0.02 V, counter 7
    result = runner.invoke(cli, ["decode", "--driver", "paddy", "-c", str(DEMO), payload])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["values"] == {"depth": 10.0, "water_temperature": 23.5, "battery": 3.0}
    assert out["counter"] == 7

    without = runner.invoke(cli, ["decode", "--driver", "paddy", payload])
    assert without.exit_code == 1
    assert without.stderr == ("Error: unknown driver 'paddy'; known: trap, water_level"
                              " (a driver of a config's layouts or drivers_dir? name the config: -c FILE)\n")


def test_decode_wrong_length(runner):
    result = runner.invoke(cli, ["decode", "--driver", "trap", "01010CE4"])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == "Error: trap cannot decode 01010ce4: wrong_length: trap expects 6 bytes, got 4\n"


def test_decode_bad_version(runner):
    result = runner.invoke(cli, ["decode", "--driver", "trap", "02010CE4002A"])
    assert result.exit_code == 1
    assert "bad_version: trap format version 2, expected 1" in result.stderr


def test_decode_unknown_driver(runner):
    result = runner.invoke(cli, ["decode", "--driver", "thermometer", "01"])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.startswith("Error: unknown driver 'thermometer'; known: trap, water_level (")


@pytest.mark.parametrize("payload", ["zz", "0101 0CE4 002", "0x01010CE4002A"])
def test_decode_not_hex(runner, payload):
    result = runner.invoke(cli, ["decode", "--driver", "trap", payload])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == f"Error: not hexadecimal: {payload!r}\n"


def test_decode_without_payload_is_a_usage_error(runner):
    result = runner.invoke(cli, ["decode", "--driver", "trap"])
    assert result.exit_code == 2
    assert "Missing argument 'PAYLOAD_HEX...'" in result.stderr


# -- status -----------------------------------------------------------------------------------------

def test_status_without_database(runner, tmp_path):
    config = tmp_path / "gw.toml"
    config.write_text(dedent('''
        gateway_id = "gw"
        data_dir = "state"

        [[sources]]
        type = "rylr"
        name = "lora0"
        port = "/dev/ttyUSB0"
        '''))
    result = runner.invoke(cli, ["status", "-c", str(config)])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.startswith(f"Error: no database at {tmp_path / 'state'}/")
    assert f"has `edgegw run -c {config}` run yet?" in result.stderr
    assert not (tmp_path / "state").exists()  # looking must not create anything

    as_json = runner.invoke(cli, ["status", "--json", "-c", str(config)])
    assert as_json.exit_code == 1
    assert as_json.stdout == ""
    assert "no database at" in as_json.stderr


def test_status_on_broken_config(runner, broken):
    assert_lists_broken_problems(runner.invoke(cli, ["status", "-c", str(broken)]), broken)


# -- which config: -c, then $EDGEGW_CONFIG, then /etc/edgegw/gateway.toml ---------------------------

# Every command that reads a gateway's config, with the arguments it needs besides the config.
CONFIG_COMMANDS = [["run"], ["status"], ["alarms"], ["outbox", "stats"], ["outbox", "list"], ["outbox", "export"],
                   ["outbox", "show", "1"], ["outbox", "retry", "1"], ["outbox", "purge", "--delivered"],
                   ["keys", "new", "trap-01"], ["keys", "reset-counter", "trap-01"], ["config", "check"]]


@pytest.fixture
def no_default_config(tmp_path, monkeypatch) -> Path:
    """The installed gateway's config path, pointed at a file that does not exist."""
    import edgegw.cli.common

    absent = tmp_path / "etc" / "gateway.toml"
    monkeypatch.setattr(edgegw.cli.common, "DEFAULT_CONFIG", absent)
    monkeypatch.delenv("EDGEGW_CONFIG", raising=False)
    return absent


@pytest.mark.parametrize("command", CONFIG_COMMANDS, ids=" ".join)
def test_without_any_config_says_both_ways_to_give_one(runner, no_default_config, command):
    result = runner.invoke(cli, command)
    assert result.exit_code == 2
    given = "FILE" if command == ["config", "check"] else "-c FILE"
    assert f"Error: no config file given: name one ({given}) or set EDGEGW_CONFIG=FILE" \
           f" (the default, {no_default_config}, does not exist)" in result.stderr


@pytest.mark.parametrize("command", CONFIG_COMMANDS, ids=" ".join)
def test_config_from_the_environment(runner, no_default_config, broken, command, monkeypatch):
    # The broken config's problems prove which file the command read.
    monkeypatch.setattr("edgegw.daemon.run", lambda *a, **k: pytest.fail("daemon started"))
    assert_lists_broken_problems(runner.invoke(cli, command, env={"EDGEGW_CONFIG": str(broken)}), broken)


@pytest.mark.parametrize("command", CONFIG_COMMANDS, ids=" ".join)
def test_config_from_the_default_path(runner, no_default_config, broken, command, monkeypatch):
    monkeypatch.setattr("edgegw.daemon.run", lambda *a, **k: pytest.fail("daemon started"))
    no_default_config.parent.mkdir()
    broken.rename(no_default_config)
    result = runner.invoke(cli, command)
    assert result.exit_code == EXIT_CONFIG, result.output
    assert result.stderr.startswith(f"3 problem(s) in {no_default_config}:\n")


def test_option_and_argument_beat_the_environment(runner, no_default_config, broken):
    env = {"EDGEGW_CONFIG": str(broken)}
    assert runner.invoke(cli, ["config", "check", str(DEMO)], env=env).exit_code == 0
    result = runner.invoke(cli, ["status", "-c", str(DEMO)], env=env)
    assert result.exit_code != EXIT_CONFIG and "problem(s)" not in result.stderr, result.output


# -- run --------------------------------------------------------------------------------------------

def test_run_on_broken_config_exits_before_starting(runner, broken, monkeypatch):
    import edgegw.daemon
    import edgegw.log

    def must_not_be_called(*args, **kwargs):
        raise AssertionError("run started something despite a broken config")

    monkeypatch.setattr(edgegw.daemon, "run", must_not_be_called)
    monkeypatch.setattr(edgegw.log, "configure", must_not_be_called)
    result = runner.invoke(cli, ["run", "-c", str(broken)])
    assert_lists_broken_problems(result, broken)
    assert isinstance(result.exception, SystemExit)


def test_run_on_missing_config(runner, tmp_path, monkeypatch):
    import edgegw.daemon

    monkeypatch.setattr(edgegw.daemon, "run", lambda *a, **k: pytest.fail("daemon started"))
    path = tmp_path / "gw.toml"
    result = runner.invoke(cli, ["run", "-c", str(path)])
    assert result.exit_code == 2
    assert result.stderr == f"1 problem(s) in {path}:\n  {path}: file not found\n"


def test_run_passes_the_loaded_config_to_the_daemon(runner, monkeypatch):
    import edgegw.daemon

    seen = {}
    monkeypatch.setattr(edgegw.daemon, "run",
                        lambda config, drivers, path: seen.update(config=config, drivers=drivers, path=path))
    result = runner.invoke(cli, ["run", "-c", str(DEMO)])
    assert result.exit_code == 0, result.output
    assert seen["config"].gateway_id == "demo-gw" and seen["path"] == DEMO  # read again at SIGHUP
    assert seen["drivers"].names() == ["paddy", "trap", "water_level"]


def test_version(runner):
    from edgegw import __version__

    result = runner.invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert result.stdout == f"edgegw, version {__version__}\n"


def test_decode_accepts_hex_in_groups_as_the_driver_docs_write_it(runner):
    result = runner.invoke(cli, ["decode", "--driver", "trap", "01", "01", "0C", "E4", "00", "2A"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["values"] == {"state": "sprung", "tamper": False, "battery": 3.3}


def test_status_calls_a_heartbeat_late_only_past_three_periods_from_the_last_beat_or_the_start():
    from edgegw.cli.status import _format_daemon
    from edgegw.running import HEARTBEAT_EVERY
    now, daemon = 1_000_000.0, {"running": True, "pid": 7, "version": "0.1.0"}
    just_started = _format_daemon(now, {**daemon, "started_at": now - 1, "heartbeat": {}})[0]
    assert "heartbeat none yet" in just_started and "LATE" not in just_started
    never_beat = _format_daemon(now, {**daemon, "started_at": now - 4 * HEARTBEAT_EVERY, "heartbeat": {}})[0]
    assert "LATE" in never_beat
    beating = {"at": now - 2 * HEARTBEAT_EVERY, "stages": {}}
    assert "LATE" not in _format_daemon(now, {**daemon, "started_at": now - 3600, "heartbeat": beating})[0]
    stale = {"at": now - 4 * HEARTBEAT_EVERY, "stages": {}}
    assert "LATE" in _format_daemon(now, {**daemon, "started_at": now - 3600, "heartbeat": stale})[0]


def test_a_time_never_set_reads_never():
    from edgegw.cli.status import ago

    # A device known only by its rejected frames has last_seen 0: not "499013.0h ago".
    assert ago(1_796_441_265.0, 0.0) == ago(1_796_441_265.0, None) == "never"
    assert ago(100.0, 40.0) == "60s ago"
