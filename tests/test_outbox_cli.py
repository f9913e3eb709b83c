"""``edgegw outbox stats|list|show|retry|purge`` on real SQLite files built through the real Store.

Every database here is written by :class:`edgegw.store.Store` as the daemon writes it (uplinks
registered, items added, acks and parkings recorded), and read back through the CLI with CliRunner.
"""

from __future__ import annotations

import csv
import json
import sqlite3
import tempfile
import threading
import time
from pathlib import Path
from textwrap import dedent

import click
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from edgegw.cli import cli
from edgegw.model import PRIORITY_ALARM, PRIORITY_HEALTH, Alarm, iso
from edgegw.outbox import PURGE_CHUNK, Outbox, parse_duration
from edgegw.store import Store, status

NOW = time.time()  # a fixed moment, for tests whose output does not show ages (the Site has its own)
DAY = 86400.0
MQTT, ORION = 1, 2  # the bits register_uplinks gives ["mqtt", "orion"] on a new database


def write_config(tmp_path: Path, synchronous: str = "FULL") -> Path:
    config = tmp_path / "gw.toml"
    config.write_text(dedent(f'''
        gateway_id = "gw"
        data_dir = "state"

        [[sources]]
        type = "rylr"
        name = "lora0"
        port = "/dev/ttyUSB0"

        [store]
        synchronous = "{synchronous}"
        '''))
    return config


def reading(item_id: str, device: str, observed: float) -> str:
    return json.dumps({"type": "reading", "id": item_id, "device": device, "driver": "water_level",
                       "observed_at": iso(observed), "values": {"level": 2612}, "units": {"level": "mm"}})


def add_reading(store: Store, item_id: str, device: str, accepted: float, pending: int = MQTT | ORION) -> int:
    store.add_item(item_id, "reading", 0, device, accepted - 5, 12.5, "boot-1", b"\x01\x02", reading(
        item_id, device, accepted - 5), pending, accepted)
    return seq_of(store, item_id)


def seq_of(store: Store, item_id: str) -> int:
    return store.conn.execute("SELECT seq FROM outbox WHERE item_id = ?", (item_id,)).fetchone()[0]


def row(db: Path, item_id: str) -> dict | None:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        r = conn.execute("SELECT * FROM outbox_items WHERE item_id = ?", (item_id,)).fetchone()
        return dict(r) if r else None
    finally:
        conn.close()


def parked_rows(db: Path) -> set[tuple[str, str]]:
    conn = sqlite3.connect(db)
    try:
        return set(conn.execute("SELECT item_id, uplink FROM parked"))
    finally:
        conn.close()


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


class Site:
    """A gateway database with two uplinks (mqtt, orion) in every state an item can be in:

    ========================  =====================================================================
    river-03:0:1              delivered 10 days ago (both acked)
    river-03:0:2              delivered 1 hour ago (both acked)
    river-03:0:3              mqtt acked; orion parked it (HTTP 400): delivered, parked for orion
    river-03:0:4              mqtt acked, pending for orion
    trap-01:0:5, trap-01:0:6  pending for both
    trap-01:0:6:sprung        alarm (open), pending for both
    gw:health:1               health report, pending for both
    trap-01:0:1:rearmed       alarm, closed and delivered 10 days ago (in the alarm log)
    ========================  =====================================================================
    """

    ERROR = 'HTTP 400: {"error":"BadRequest","description":"Attribute wl: unknown unit"}'

    def __init__(self, tmp_path: Path):
        self.now = now = time.time()  # at fixture time: the text output shows ages
        self.config = write_config(tmp_path)
        self.db = tmp_path / "state" / "edgegw.db"
        store = Store(self.db)
        assert store.register_uplinks(["mqtt", "orion"]) == {"mqtt": MQTT, "orion": ORION}
        store.begin()
        self.seq = {}
        for i, (item, device, accepted) in enumerate([
            ("river-03:0:1", "river-03", now - 11 * DAY), ("river-03:0:2", "river-03", now - 2 * 3600),
            ("river-03:0:3", "river-03", now - 3600), ("river-03:0:4", "river-03", now - 1800),
            ("trap-01:0:5", "trap-01", now - 600), ("trap-01:0:6", "trap-01", now - 300),
        ]):
            self.seq[item] = add_reading(store, item, device, accepted)
            assert self.seq[item] == i + 1
        old = Alarm("trap-01:0:1:rearmed", "trap_rearmed", "informational", "trap-01", "trap", now - 11 * DAY,
                    "trap rearmed")
        assert store.add_alarm(old, MQTT | ORION, now - 11 * DAY)
        store.conn.execute("UPDATE alarms SET open = 0")  # a closed entry of the alarm log
        sprung = Alarm("trap-01:0:6:sprung", "trap_sprung", "high", "trap-01", "trap", now - 300, "trap sprung",
                       opens=True)
        assert store.add_alarm(sprung, MQTT | ORION, now - 290)
        health = {"type": "health", "id": "gw:health:1", "gateway": "gw", "observed_at": iso(now - 60)}
        store.add_health(health, MQTT | ORION, now - 60)
        for item in ("trap-01:0:1:rearmed", "trap-01:0:6:sprung", "gw:health:1"):
            self.seq[item] = seq_of(store, item)
        one, two, three, four = (self.seq[f"river-03:0:{i}"] for i in (1, 2, 3, 4))
        store.acked(MQTT, [one, self.seq["trap-01:0:1:rearmed"]], now - 10 * DAY)
        store.acked(ORION, [one, self.seq["trap-01:0:1:rearmed"]], now - 10 * DAY)
        store.acked(MQTT, [two, three, four], now - 3500)
        store.acked(ORION, [two], now - 3400)
        store.park("orion", ORION, three, self.ERROR, now - 3300)
        store.commit()
        store.close()

    def run(self, runner: CliRunner, *args: str):
        return runner.invoke(cli, ["outbox", *args, "-c", str(self.config)])


@pytest.fixture
def site(tmp_path) -> Site:
    return Site(tmp_path)


# -- stats ------------------------------------------------------------------------------------------

def test_stats_json_counts_pending_per_uplink_delivered_parked_and_kinds(runner, site):
    result = site.run(runner, "stats", "--json")
    assert result.exit_code == 0, result.output
    st = json.loads(result.stdout)
    # river-03:0:3, which orion parked, is no uplink's any more, but it was not delivered.
    assert (st["pending"], st["delivered"], st["parked"]) == (5, 3, 1)
    assert st["by_kind"] == {"reading": {"pending": 3, "delivered": 2}, "alarm": {"pending": 1, "delivered": 1},
                             "health": {"pending": 1, "delivered": 0}}
    assert st["by_uplink"]["mqtt"] == {"state": "starting", "pending": 4, "oldest_pending_at": site.now - 600,
                                       "parked": 0, "configured": True}
    assert st["by_uplink"]["orion"] == {"state": "starting", "pending": 5, "oldest_pending_at": site.now - 1800,
                                        "parked": 1, "configured": True}
    assert st["oldest_pending_at"] == site.now - 1800  # river-03:0:4, still waiting for orion
    assert 1800 <= st["oldest_pending_s"] < 1800 + 60
    disk = st["disk"]
    assert disk["database_bytes"] == site.db.stat().st_size > 0
    assert disk["wal_bytes"] >= 0 and disk["free_bytes"] >= 0


def test_status_does_not_count_a_parked_item_as_delivered(runner, site):
    # An NGSI peer refusing everything with HTTP 400 showed "0 pending, 12 delivered": nothing was.
    st = json.loads(runner.invoke(cli, ["status", "--json", "-c", str(site.config)]).stdout)
    assert (st["outbox"]["pending"], st["outbox"]["delivered"], st["outbox"]["parked"]) == (5, 3, 1)
    text = runner.invoke(cli, ["status", "-c", str(site.config)]).stdout
    assert "5 pending (0 in flight), 3 delivered, 1 parked (refused for good: edgegw outbox list --parked)" in text


def test_stats_text(runner, site):
    result = site.run(runner, "stats")
    assert result.exit_code == 0, result.output
    out = result.stdout.splitlines()
    assert out[0] == "outbox   5 pending, 3 delivered, 1 parked; oldest pending accepted 30m ago"
    assert out[1:4] == ["uplinks", "  mqtt         starting   4 pending (oldest 10m ago), 0 parked",
                        "  orion        starting   5 pending (oldest 30m ago), 1 parked"]
    assert out[4:8] == ["kinds", "  reading      3 pending, 2 delivered", "  alarm        1 pending, 1 delivered",
                        "  health       1 pending, 0 delivered"]
    assert out[8].startswith("disk     database ") and "WAL" in out[8]


def test_stats_lists_parked_items_of_an_uplink_no_longer_configured(runner, site):
    store = Store(site.db)
    store.register_uplinks(["mqtt"])  # orion removed from the config: its bit is released
    store.close()
    st = json.loads(site.run(runner, "stats", "--json").stdout)
    assert st["by_uplink"]["orion"] == {"state": None, "pending": 0, "oldest_pending_at": None, "parked": 1,
                                        "configured": False}
    assert "orion        (removed)  1 parked (no longer configured)" in site.run(runner, "stats").stdout


# -- list -------------------------------------------------------------------------------------------

def test_list_pending_in_the_order_the_forwarder_sends(runner, site):
    result = site.run(runner, "list", "--pending", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    # alarm first, then the health report, then readings oldest first: priority DESC, seq
    assert [r["item_id"] for r in rows] == ["trap-01:0:6:sprung", "gw:health:1", "river-03:0:4", "trap-01:0:5",
                                           "trap-01:0:6"]
    assert [r["priority"] for r in rows] == [PRIORITY_ALARM, PRIORITY_HEALTH, 0, 0, 0]
    assert rows[2]["pending"] == ["orion"] and rows[3]["pending"] == ["mqtt", "orion"]
    four = rows[2]
    assert four == {"seq": site.seq["river-03:0:4"], "item_id": "river-03:0:4", "kind": "reading", "priority": 0,
                    "device_id": "river-03", "observed_at": site.now - 1805, "accepted_at": site.now - 1800,
                    "delivered_at": None, "pending": ["orion"], "parked": []}
    # the same order the forwarder's own query gives
    conn = sqlite3.connect(site.db)
    sent = [r[0] for r in conn.execute(
        "SELECT item_id FROM outbox_items WHERE pending != 0 AND pending & ? ORDER BY priority DESC, seq", (ORION,))]
    conn.close()
    assert [r["item_id"] for r in rows] == sent

    only_mqtt = json.loads(site.run(runner, "list", "--pending", "--uplink", "mqtt", "--json").stdout)
    assert "river-03:0:4" not in [r["item_id"] for r in only_mqtt] and len(only_mqtt) == 4


def test_export_streams_every_matching_row_with_its_batch_item_as_json_lines(runner, site):
    result = site.run(runner, "export", "--pending")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["item_id"] for r in rows] == sorted(["trap-01:0:6:sprung", "gw:health:1", "river-03:0:4", "trap-01:0:5",
                                                   "trap-01:0:6"], key=site.seq.get)  # seq order, not send order
    four = next(r for r in rows if r["item_id"] == "river-03:0:4")
    assert four["pending"] == "orion" and four["item"]["values"] == {"level": 2612}
    delivered = [json.loads(line)["item_id"] for line in site.run(runner, "export", "--delivered").stdout.splitlines()]
    assert "river-03:0:1" in delivered and "river-03:0:4" not in delivered
    only_mqtt = site.run(runner, "export", "--pending", "--uplink", "mqtt", "--kind", "reading").stdout.splitlines()
    assert [json.loads(line)["item_id"] for line in only_mqtt] == ["trap-01:0:5", "trap-01:0:6"]


def test_export_as_csv_to_a_file(runner, site, tmp_path):
    out = tmp_path / "backlog.csv"
    result = site.run(runner, "export", "--pending", "--format", "csv", "-o", str(out))
    assert result.exit_code == 0 and result.stdout == ""
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    assert len(rows) == 5 and list(rows[0]) == ["seq", "item_id", "kind", "priority", "device_id", "observed_at",
                                                "accepted_at", "delivered_at", "pending", "item"]
    alarm = next(r for r in rows if r["kind"] == "alarm")
    assert json.loads(alarm["item"])["id"] == "trap-01:0:6:sprung" and alarm["pending"] == "mqtt,orion"
    assert site.run(runner, "export", "--uplink", "nowhere").stderr.startswith("Error: unknown uplink 'nowhere'")


def test_export_to_a_folder_that_is_not_there_says_so_even_with_nothing_to_export(runner, site, tmp_path):
    # It exited 0 and said nothing when no row matched: the USB stick's folder mistyped went unseen.
    for kind in ("reading", "alarm"):
        result = site.run(runner, "export", "--kind", kind, "--device", "nobody", "-o", str(tmp_path / "no" / "x"))
        assert result.exit_code == 1
        assert result.stderr == (f"Error: could not write {tmp_path / 'no' / 'x'}: No such file or directory;"
                                 " nothing was exported\n")


def test_export_onto_a_full_stick_leaves_no_part_of_a_file_and_the_old_one_whole(runner, site, tmp_path):
    import os
    import subprocess

    stick = tmp_path / "stick"
    stick.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(stick)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        (stick / "backlog.jsonl").write_text("yesterday's export\n")
        with (stick / "filler").open("wb", buffering=0) as filler, pytest.raises(OSError):
            while True:
                filler.write(b"x" * 4096)
        result = site.run(runner, "export", "--pending", "-o", str(stick / "backlog.jsonl"))
        assert result.exit_code == 1, result.output
        assert result.stderr == (f"Error: could not write {stick / 'backlog.jsonl'}: No space left on device;"
                                 " nothing was exported\n")  # not a traceback
        assert sorted(p.name for p in stick.iterdir()) == ["backlog.jsonl", "filler"]
        assert (stick / "backlog.jsonl").read_text() == "yesterday's export\n"
        (stick / "filler").unlink()
        result = site.run(runner, "export", "--pending", "-o", str(stick / "backlog.jsonl"))
        assert result.exit_code == 0 and result.stderr == f"5 row(s) written to {stick / 'backlog.jsonl'}\n"
        assert len((stick / "backlog.jsonl").read_text().splitlines()) == 5
    finally:
        subprocess.run(["umount", "-l", str(stick)])


def test_alarms_recent_takes_a_count_not_a_negative_or_a_number_past_sqlite(runner, site):
    for recent in ("-3", str(10**20)):
        result = runner.invoke(cli, ["alarms", "-c", str(site.config), "--recent", recent])
        assert result.exit_code == 2 and "is not in the range 0<=x<=1000000" in result.stderr, result.output


def test_status_shows_what_a_peer_answered_without_letting_it_drive_the_terminal(runner, site):
    # An HTTP peer's garbage status line reached the maintainer's terminal raw: ESC ] 0 ; ... BEL
    # set its title, and any other escape sequence would do what it says.
    store = Store(site.db)
    with store.transaction(durable=False):
        store.uplink_state("orion", "down", "HTTP 400: \x1b]0;owned\x07\x00\x9b", time.time())
    store.close()
    result = runner.invoke(cli, ["status", "-c", str(site.config)])
    assert result.exit_code == 0, result.output
    assert "HTTP 400: \\x1b]0;owned\\x07\\x00\\x9b" in result.stdout
    assert not any(c in result.stdout for c in "\x1b\x07\x00\x9b")


def test_list_pending_text_and_limit(runner, site):
    result = site.run(runner, "list", "--pending", "--limit", "2")
    assert result.exit_code == 0, result.output
    head, first, second, footer = result.stdout.splitlines()
    assert head.split() == ["SEQ", "ITEM", "ID", "KIND", "DEVICE", "OBSERVED", "ACCEPTED", "STATE"]
    assert first.split()[:4] == [str(site.seq["trap-01:0:6:sprung"]), "trap-01:0:6:sprung", "alarm", "trap-01"]
    assert first.endswith("pending: mqtt,orion")
    assert second.split()[1] == "gw:health:1"
    assert footer == "(the first 2; --limit 0 lists all)"


def test_list_delivered_newest_first_with_filters(runner, site):
    rows = json.loads(site.run(runner, "list", "--delivered", "--json").stdout)
    # latest delivery first; river-03:0:1 and the old alarm were delivered at the same moment: higher seq first
    assert [r["item_id"] for r in rows] == ["river-03:0:3", "river-03:0:2", "trap-01:0:1:rearmed", "river-03:0:1"]
    assert rows[0]["pending"] == [] and rows[0]["parked"] == ["orion"] and rows[0]["delivered_at"] == site.now - 3300
    by_kind = json.loads(site.run(runner, "list", "--delivered", "--kind", "alarm", "--json").stdout)
    assert [r["item_id"] for r in by_kind] == ["trap-01:0:1:rearmed"]
    by_device = json.loads(site.run(runner, "list", "--device", "trap-01", "--json").stdout)
    assert [r["item_id"] for r in by_device] == ["trap-01:0:6:sprung", "trap-01:0:1:rearmed", "trap-01:0:6",
                                                 "trap-01:0:5"]  # no state: newest accepted (highest seq) first
    text = site.run(runner, "list", "--delivered", "--kind", "reading").stdout.splitlines()
    assert len(text) == 4 and "delivered " in text[1] and text[1].endswith("parked: orion")
    assert site.run(runner, "list", "--kind", "health", "--delivered").stdout == "no items\n"


def test_list_parked_shows_the_uplink_and_the_platforms_error(runner, site):
    rows = json.loads(site.run(runner, "list", "--parked", "--json").stdout)
    assert rows == [{"item_id": "river-03:0:3", "uplink": "orion", "kind": "reading", "error": Site.ERROR,
                     "parked_at": site.now - 3300, "seq": site.seq["river-03:0:3"], "device_id": "river-03",
                     "observed_at": site.now - 3605, "accepted_at": site.now - 3600}]
    text = site.run(runner, "list", "--parked").stdout.splitlines()
    assert text[0].split() == ["SEQ", "ITEM", "ID", "KIND", "DEVICE", "UPLINK", "PARKED", "ERROR"]
    assert text[1].split()[:5] == [str(site.seq["river-03:0:3"]), "river-03:0:3", "reading", "river-03", "orion"]
    assert text[1].endswith(Site.ERROR)
    assert json.loads(site.run(runner, "list", "--parked", "--uplink", "mqtt", "--json").stdout) == []


def test_list_unknown_uplink(runner, site):
    result = site.run(runner, "list", "--pending", "--uplink", "orian")
    assert result.exit_code == 1
    assert result.stderr == "Error: unknown uplink 'orian'; configured: mqtt, orion\n"


def test_delivered_items_by_uplink_are_refused_not_listed_as_none(runner, site):
    # Delivery is recorded for an item, not per uplink: an empty list would say nothing was delivered.
    assert site.run(runner, "list", "--delivered").stdout != "no items\n"
    for command in ("list", "export"):
        result = site.run(runner, command, "--delivered", "--uplink", "mqtt")
        assert result.exit_code == 1, result.output
        assert result.stderr.startswith("Error: delivered items are not told apart by uplink ('mqtt'): an item is")


# -- show -------------------------------------------------------------------------------------------

def test_show_by_item_id_and_by_seq(runner, site):
    by_id = site.run(runner, "show", "river-03:0:3", "--json")
    assert by_id.exit_code == 0, by_id.output
    item = json.loads(by_id.stdout)
    assert item["body"] == json.loads(reading("river-03:0:3", "river-03", site.now - 3605))
    assert item["uplinks"] == {"mqtt": {"state": "done", "error": None, "parked_at": None},
                               "orion": {"state": "parked", "error": Site.ERROR, "parked_at": site.now - 3300}}
    assert (item["seq"], item["in_outbox"], item["kind"], item["device_id"]) == (3, True, "reading", "river-03")
    by_seq = site.run(runner, "show", str(site.seq["river-03:0:3"]), "--json")
    assert json.loads(by_seq.stdout) == item

    four = json.loads(site.run(runner, "show", "river-03:0:4", "--json").stdout)
    assert {k: v["state"] for k, v in four["uplinks"].items()} == {"mqtt": "done", "orion": "pending"}


def test_show_text_has_the_state_per_uplink_and_the_full_json(runner, site):
    result = site.run(runner, "show", "trap-01:0:6:sprung")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"item       trap-01:0:6:sprung (seq {site.seq['trap-01:0:6:sprung']}, alarm, device trap-01)"
    assert "  mqtt         pending" in lines and "  orion        pending" in lines
    body = json.loads("\n".join(lines[lines.index("{"):]))
    assert body["type"] == "alarm" and body["alarm"] == "trap_sprung" and body["severity"] == "high"

    parked = site.run(runner, "show", "river-03:0:3").stdout
    assert f"  orion        parked {time.strftime('%Y-%m-%d %H:%M:%SZ', time.gmtime(site.now - 3300))}: {Site.ERROR}" \
        in parked.splitlines()


def test_show_unknown_id(runner, site):
    for ident in ("river-03:0:99", "999", "9" * 25, "²"):  # past SQLite's integers; a digit, not ASCII
        result = site.run(runner, "show", ident)
        assert result.exit_code == 1
        assert result.stdout == ""
        assert result.stderr == f"Error: no item '{ident}' in the outbox (give an item id or a seq)\n"


# -- retry ------------------------------------------------------------------------------------------

def test_retry_requeues_a_parked_item_for_that_uplink_only(runner, site):
    before = row(site.db, "river-03:0:3")
    assert before["pending"] == 0 and before["delivered_at"] == site.now - 3300
    result = site.run(runner, "retry", "river-03:0:3")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        f"re-queued river-03:0:3 for orion (seq {site.seq['river-03:0:3']})",
        "1 item(s) back in the queue; a running gateway sends them within seconds"]
    after = row(site.db, "river-03:0:3")
    assert after["pending"] == ORION  # mqtt acknowledged it: it is not sent to mqtt again
    assert after["delivered_at"] is None
    assert {k: after[k] for k in ("seq", "body", "raw", "accepted_at")} == \
        {k: before[k] for k in ("seq", "body", "raw", "accepted_at")}
    assert parked_rows(site.db) == set()
    for_orion = [r["item_id"] for r in json.loads(site.run(runner, "list", "--pending", "--uplink", "orion",
                                                             "--json").stdout)]
    for_mqtt = [r["item_id"] for r in json.loads(site.run(runner, "list", "--pending", "--uplink", "mqtt",
                                                            "--json").stdout)]
    assert "river-03:0:3" in for_orion and "river-03:0:3" not in for_mqtt


def test_retry_with_uplink_leaves_the_other_uplinks_parking(runner, tmp_path):
    config = write_config(tmp_path)
    db = tmp_path / "state" / "edgegw.db"
    store = Store(db)
    store.register_uplinks(["mqtt", "orion"])
    store.begin()
    seq = add_reading(store, "paddy-7:0:1", "paddy-7", NOW)
    store.park("mqtt", MQTT, seq, "message too large", NOW)
    store.park("orion", ORION, seq, "HTTP 422", NOW)
    store.commit()
    store.close()
    assert row(db, "paddy-7:0:1")["pending"] == 0

    result = runner.invoke(cli, ["outbox", "retry", "-c", str(config), "--uplink", "orion", str(seq)])
    assert result.exit_code == 0, result.output
    assert row(db, "paddy-7:0:1")["pending"] == ORION
    assert parked_rows(db) == {("paddy-7:0:1", "mqtt")}

    again = runner.invoke(cli, ["outbox", "retry", "-c", str(config), "--uplink", "orion", str(seq)])
    assert again.exit_code == 1
    assert again.stderr == f"Error: {seq} is not parked for orion (parked for mqtt); nothing retried\n"


def test_retry_after_the_row_was_purged_rebuilds_it_from_the_parked_copy(runner, site):
    assert site.run(runner, "purge", "--delivered").exit_code == 0
    assert row(site.db, "river-03:0:3") is None  # delivered (acked by mqtt, parked by orion): purged
    shown = json.loads(site.run(runner, "show", "river-03:0:3", "--json").stdout)
    assert shown["in_outbox"] is False and shown["seq"] is None
    assert shown["body"]["id"] == "river-03:0:3" and shown["uplinks"]["orion"]["error"] == Site.ERROR
    assert "outbox row purged, kept as parked" in site.run(runner, "show", "river-03:0:3").stdout

    result = site.run(runner, "retry", "river-03:0:3", "--uplink", "orion")
    assert result.exit_code == 0, result.output
    new = row(site.db, "river-03:0:3")
    assert result.stdout.splitlines()[0] == (f"re-queued river-03:0:3 for orion (seq {new['seq']}; its outbox row "
                                             "had been purged: rebuilt from the parked copy)")
    assert new["seq"] > site.seq["gw:health:1"]
    assert new["body"] == reading("river-03:0:3", "river-03", site.now - 3605)  # the very text that was parked
    assert (new["kind"], new["priority"], new["device_id"], new["pending"]) == ("reading", 0, "river-03", ORION)
    assert new["observed_at"] == pytest.approx(site.now - 3605, abs=0.001)  # from the body's observed_at
    assert new["delivered_at"] is None and parked_rows(site.db) == set()


def test_retry_rebuilt_alarm_keeps_alarm_priority(tmp_path):
    db = tmp_path / "gw.db"
    store = Store(db)
    store.register_uplinks(["orion"])
    store.begin()
    alarm = Alarm("river-03:0:9:stage", "water_level_alarm", "critical", "river-03", "water_level", NOW - 100,
                  "danger stage", opens=True)
    store.add_alarm(alarm, 1, NOW - 100)
    store.park("orion", 1, seq_of(store, alarm.alarm_id), "HTTP 400", NOW - 50)
    store.commit()
    store.close()
    ob = Outbox(db)
    purge = ob.purge_delivered()
    assert sum(purge) == 1 and (purge.deleted_items, purge.deleted_alarms) == (1, 0)  # the alarm is still open
    done = ob.retry([alarm.alarm_id])
    assert [(r.item_id, r.uplink, r.reinserted) for r in done.requeued] == [(alarm.alarm_id, "orion", True)]
    new = row(db, alarm.alarm_id)
    assert (new["kind"], new["priority"], new["device_id"], new["pending"]) == ("alarm", PRIORITY_ALARM,
                                                                                "river-03", 1)
    assert new["observed_at"] == pytest.approx(NOW - 100, abs=0.001)  # raised_at


def test_retry_all_parked(runner, site):
    store = Store(site.db)
    store.begin()
    store.park("mqtt", MQTT, site.seq["trap-01:0:5"], "HTTP 413", site.now)
    store.park("orion", ORION, site.seq["trap-01:0:5"], "HTTP 400", site.now)
    store.commit()
    store.close()
    assert row(site.db, "trap-01:0:5")["pending"] == 0

    only_orion = site.run(runner, "retry", "--all-parked", "--uplink", "orion")
    assert only_orion.exit_code == 0, only_orion.output
    assert only_orion.stdout.splitlines()[-1].startswith("2 item(s) back in the queue")
    assert parked_rows(site.db) == {("trap-01:0:5", "mqtt")}
    assert row(site.db, "trap-01:0:5")["pending"] == ORION and row(site.db, "river-03:0:3")["pending"] == ORION

    rest = site.run(runner, "retry", "--all-parked")
    assert rest.exit_code == 0, rest.output
    assert rest.stdout.splitlines()[0] == f"re-queued trap-01:0:5 for mqtt (seq {site.seq['trap-01:0:5']})"
    assert row(site.db, "trap-01:0:5")["pending"] == MQTT | ORION and parked_rows(site.db) == set()

    nothing = site.run(runner, "retry", "--all-parked")
    assert nothing.exit_code == 1
    assert nothing.stderr == "Error: nothing is parked\n"


def test_retry_errors_are_one_line_and_change_nothing(runner, site):
    cases = {
        ("retry", "river-03:0:3", "nope:0:1"): "Error: no item 'nope:0:1' in the outbox (give an item id or a seq);"
                                               " nothing retried\n",
        ("retry", "river-03:0:4"): "Error: river-03:0:4 is not parked; nothing retried\n",
        ("retry", "river-03:0:3", "--uplink", "mqtt"): "Error: river-03:0:3 is not parked for mqtt (parked for orion);"
                                                       " nothing retried\n",
        ("retry", "--all-parked", "--uplink", "ngsi"): "Error: unknown uplink 'ngsi'; configured: mqtt, orion\n",
        ("retry", "--all-parked", "--uplink", "mqtt"): "Error: nothing is parked for mqtt\n",
    }
    for args, message in cases.items():
        result = site.run(runner, *args)
        assert (result.exit_code, result.stdout, result.stderr) == (1, "", message), args
    assert parked_rows(site.db) == {("river-03:0:3", "orion")}  # the good id of the first case was rolled back
    assert row(site.db, "river-03:0:3")["pending"] == 0

    for args in (("retry",), ("retry", "river-03:0:3", "--all-parked")):
        usage = site.run(runner, *args)
        assert usage.exit_code == 2
        assert "name the items to retry (ID...) or give --all-parked, not both" in usage.stderr


def test_retry_for_an_uplink_no_longer_configured(runner, site):
    store = Store(site.db)
    store.register_uplinks(["mqtt"])
    store.close()
    named = site.run(runner, "retry", "river-03:0:3", "--uplink", "orion")
    assert named.exit_code == 1
    assert named.stderr == ("Error: uplink 'orion' is no longer configured (its queue is gone): its parked items"
                            " cannot be sent to it again\n")
    everything = site.run(runner, "retry", "--all-parked")
    assert everything.exit_code == 1
    assert everything.stderr == "Error: nothing is parked (only for uplinks no longer configured: orion)\n"
    assert parked_rows(site.db) == {("river-03:0:3", "orion")}


def test_retry_waits_for_the_daemons_transaction(tmp_path, site):
    """A write while the daemon holds the write lock waits (busy_timeout) instead of failing."""
    daemon = sqlite3.connect(site.db, isolation_level=None, check_same_thread=False)
    daemon.execute("BEGIN IMMEDIATE")
    daemon.execute("UPDATE uplinks SET state = 'up'")
    threading.Timer(0.5, daemon.execute, ["COMMIT"]).start()
    started = time.monotonic()
    done = Outbox(site.db).retry(["river-03:0:3"])
    assert time.monotonic() - started >= 0.4
    assert [r.item_id for r in done.requeued] == ["river-03:0:3"]
    daemon.close()


# -- purge ------------------------------------------------------------------------------------------

def test_purge_older_than_deletes_old_delivered_items_and_closed_alarms_only(runner, site):
    conn = sqlite3.connect(site.db)
    pending = "SELECT item_id, pending, body FROM outbox_items WHERE pending != 0 ORDER BY seq"
    pending_before = conn.execute(pending).fetchall()
    conn.close()
    result = site.run(runner, "purge", "--delivered", "--older-than", "7d")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("purged 2 delivered or parked item(s) and 1 closed alarm(s) (delivered before ")
    assert lines[1].startswith("on disk: database ") and " before, " in lines[1] and " after; " in lines[1]
    assert row(site.db, "river-03:0:1") is None and row(site.db, "trap-01:0:1:rearmed") is None
    assert row(site.db, "river-03:0:2") is not None and row(site.db, "river-03:0:3") is not None  # younger
    conn = sqlite3.connect(site.db)
    assert conn.execute(pending).fetchall() == pending_before
    assert [r[0] for r in conn.execute("SELECT id FROM alarms")] == ["trap-01:0:6:sprung"]  # open: kept
    conn.close()
    assert parked_rows(site.db) == {("river-03:0:3", "orion")}  # parked rows are kept for retry

    again = site.run(runner, "purge", "--delivered", "--older-than", "7d")
    assert again.exit_code == 0
    assert again.stdout.startswith("nothing to purge: no items delivered before ")


def test_purge_all_delivered_never_touches_pending(runner, site):
    result = site.run(runner, "purge", "--delivered")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("purged 4 delivered or parked item(s) and 1 closed alarm(s) (all delivered)\n")
    stats = json.loads(site.run(runner, "stats", "--json").stdout)
    assert (stats["pending"], stats["delivered"], stats["parked"]) == (5, 0, 1)
    assert site.run(runner, "purge", "--delivered").stdout == "nothing to purge: no delivered items\n"


def test_purge_needs_what_to_purge_and_a_valid_duration(runner, site):
    bare = site.run(runner, "purge")
    assert bare.exit_code == 2 and "say what to purge: --delivered" in bare.stderr
    bad = site.run(runner, "purge", "--delivered", "--older-than", "a week")
    assert bad.exit_code == 2
    assert "Invalid value for '--older-than': expected a duration with a unit, such as \"90s\"" in bad.stderr
    assert json.loads(site.run(runner, "stats", "--json").stdout)["delivered"] == 3


def test_parse_duration_speaks_the_configs_language():
    assert [parse_duration(t) for t in ("30s", "90s", "10m", "12h", "7d")] == [30, 90, 600, 43200, 604800]
    for bare in ("0", "30"):  # a bare number is refused here as in a config file
        with pytest.raises(ValueError, match="with a unit"):
            parse_duration(bare)


def test_purge_over_more_rows_than_one_chunk_shows_progress(runner, tmp_path, monkeypatch):
    half = PURGE_CHUNK // 2
    config = write_config(tmp_path)
    db = tmp_path / "state" / "edgegw.db"
    store = Store(db)
    store.register_uplinks(["mqtt"])
    store.begin()
    body = reading("x", "river-03", NOW)
    for i in range(2 * PURGE_CHUNK + half + 300):
        store.add_item(f"river-03:0:{i}", "reading", 0, "river-03", NOW, 0.0, "b", None, body, MQTT, NOW)
    store.acked(MQTT, list(range(1, 2 * PURGE_CHUNK + half + 1)), NOW - DAY)  # two chunks and a half delivered
    store.commit()
    store.close()

    bars: list[dict] = []
    real = click.progressbar

    def recording(*args, **kwargs):
        bar = real(*args, **kwargs)
        seen = {"length": kwargs.get("length"), "updates": []}
        bars.append(seen)
        update = bar.update

        def record(n, current_item=None):
            seen["updates"].append(n)
            update(n, current_item)
        bar.update = record
        return bar

    monkeypatch.setattr(click, "progressbar", recording)
    result = runner.invoke(cli, ["outbox", "purge", "-c", str(config), "--delivered"])
    assert result.exit_code == 0, result.output
    assert bars == [{"length": 2 * PURGE_CHUNK + half, "updates": [PURGE_CHUNK, PURGE_CHUNK, half]}]
    assert result.stderr.startswith("purging")  # the bar (only its label when stderr is not a terminal)
    assert result.stdout.startswith(f"purged {2 * PURGE_CHUNK + half} delivered or parked item(s) and 0 closed alarm(s)")
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT count(*), min(seq) FROM outbox_items WHERE pending = ?", (MQTT,)).fetchone() \
        == (300, 2 * PURGE_CHUNK + half + 1)
    assert conn.execute("SELECT count(*) FROM outbox").fetchone()[0] == 300
    conn.close()


def test_purge_commits_each_chunk_so_the_daemon_can_write_between_them(tmp_path):
    db = tmp_path / "gw.db"
    store = Store(db)
    store.register_uplinks(["mqtt"])
    store.begin()
    for i in range(1000):
        store.add_item(f"d:0:{i}", "reading", 0, "d", NOW, 0.0, "b", None, "{}", MQTT, NOW)
    store.acked(MQTT, list(range(1, 1001)), NOW - DAY)
    store.commit()

    purge = Outbox(db).purge_delivered(chunk=300)
    assert (purge.items, purge.alarms, purge.total) == (1000, 0, 1000)
    chunks = []
    for n in purge:
        chunks.append(n)
        # Between chunks the write lock is free: the daemon's writer gets it at once, not after the purge.
        store.conn.execute("PRAGMA busy_timeout=0")
        store.begin()
        store.add_item(f"new:{len(chunks)}", "reading", 0, "d", NOW, 0.0, "b", None, "{}", MQTT, NOW)
        store.commit()
        left = store.conn.execute("SELECT count(*) FROM outbox_items WHERE pending = 0").fetchone()[0]
        assert left == 1000 - sum(chunks)  # each chunk is committed when it is reported
    assert chunks == [300, 300, 300, 100]
    assert (purge.deleted_items, purge.deleted_alarms) == (1000, 0)
    assert purge.after is not None and purge.before.database_bytes > 0
    assert store.conn.execute("SELECT count(*) FROM outbox_items WHERE pending != 0").fetchone()[0] == 4
    store.close()


@settings(max_examples=25, deadline=None)
@given(
    items=st.lists(st.tuples(st.sampled_from(["ack", "ack_mqtt", "park_orion", "pending"]),
                             st.floats(0, 20 * DAY)), min_size=0, max_size=60),
    older_than=st.one_of(st.none(), st.floats(1, 20 * DAY)),
    chunk=st.integers(1, 25),
)
def test_purge_then_stats_pending_and_parked_unchanged(items, older_than, chunk):
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "gw.db"
        store = Store(db)
        store.register_uplinks(["mqtt", "orion"])
        store.begin()
        for i, (fate, age) in enumerate(items):
            seq = add_reading(store, f"d:0:{i}", "d", NOW - 30 * DAY)
            when = NOW - age
            if fate == "ack":
                store.acked(MQTT, [seq], when)
                store.acked(ORION, [seq], when)
            elif fate == "ack_mqtt":
                store.acked(MQTT, [seq], when)
            elif fate == "park_orion":
                store.acked(MQTT, [seq], when)
                store.park("orion", ORION, seq, "HTTP 400", when)
        store.commit()
        store.close()
        ob = Outbox(db)
        before = ob.stats()
        purge = ob.purge_delivered(older_than, chunk=chunk, now=NOW)
        assert sum(purge) == purge.total == purge.deleted_items
        after = ob.stats()
        assert after.pending == before.pending
        assert {n: u.pending for n, u in after.by_uplink.items()} == {n: u.pending for n, u in before.by_uplink.items()}
        assert after.parked == before.parked
        done = [(fate, age) for fate, age in items if fate in ("ack", "park_orion")]
        kept = [fate for fate, age in done if older_than is not None and NOW - age >= NOW - older_than]  # as SQL compares
        assert after.delivered == kept.count("ack")  # a parked item is no uplink's, but not delivered
        assert purge.deleted_items == len(done) - len(kept)


# -- no database, pragmas ---------------------------------------------------------------------------

@pytest.mark.parametrize("args", [["stats"], ["stats", "--json"], ["list"], ["show", "1"], ["retry", "1"],
                                  ["retry", "--all-parked"], ["purge", "--delivered"]])
def test_without_a_database_every_command_says_so(runner, tmp_path, args):
    config = write_config(tmp_path)
    result = runner.invoke(cli, ["outbox", *args, "-c", str(config)])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == (f"Error: no database at {tmp_path / 'state' / 'edgegw.db'}: "
                             f"has `edgegw run -c {config}` run yet?\n")
    assert not (tmp_path / "state").exists()  # looking must not create anything


def test_a_file_that_is_not_a_database_is_one_line_not_a_traceback(runner, tmp_path):
    config = write_config(tmp_path)
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "edgegw.db").write_bytes(b"not sqlite at all " * 100)
    result = runner.invoke(cli, ["outbox", "stats", "-c", str(config)])
    assert result.exit_code == 1
    assert result.stderr == (f"Error: the gateway database {tmp_path / 'state' / 'edgegw.db'} is damaged (file is not"
                             " a database): the daemon sets it aside and starts a fresh one when it next starts"
                             " (sudo systemctl restart edgegw)\n")


@pytest.mark.parametrize("synchronous, level", [("FULL", 2), ("NORMAL", 1)])
def test_writes_use_the_daemons_pragmas(runner, tmp_path, monkeypatch, synchronous, level):
    import edgegw.outbox

    config = write_config(tmp_path, synchronous)
    Store(tmp_path / "state" / "edgegw.db").close()
    seen = []
    real = edgegw.outbox.connect

    def connect(*args, **kwargs):
        conn = real(*args, **kwargs)
        seen.append([conn.execute(f"PRAGMA {p}").fetchone()[0] for p in ("journal_mode", "synchronous",
                                                                         "busy_timeout")])
        return conn

    monkeypatch.setattr(edgegw.outbox, "connect", connect)
    result = runner.invoke(cli, ["outbox", "retry", "--all-parked", "-c", str(config)])
    assert result.stderr == "Error: nothing is parked\n"
    assert len(seen) == 1
    journal, sync, busy = seen[0]
    assert (journal, sync) == ("wal", level) and busy >= 10_000  # the config's synchronous, as the daemon's


# -- with the daemon running ------------------------------------------------------------------------

@pytest.fixture
def orion():
    """The test context broker (an Orion look-alike) on a free loopback port."""
    from tests.context_broker import ContextBroker

    with ContextBroker() as broker:
        yield broker


def test_retry_and_purge_while_the_daemon_runs(runner, tmp_path, emulator, orion):
    """The platform refuses trap-01 (not provisioned): its readings are parked. Once it is provisioned,
    ``retry`` puts them back while the daemon runs, and they arrive; ``purge`` then clears what went."""
    from tests.gateway import Daemon, Sender, wait_until
    from tests.test_fiware_end_to_end import ngsi_v2, trap_states
    from tests.test_fiware_end_to_end import write_config as fiware_config

    orion.reject_entity("urn:ngsi-ld:Device:trap-01", 400, "trap-01 is not provisioned here")
    config = fiware_config(tmp_path, emulator.link, ngsi_v2(orion.url))
    daemon = Daemon(config).start()
    ob = Outbox(daemon.db)
    try:
        daemon.wait_receiving()
        sender = Sender(emulator)
        sender.burst(30)
        traps = {rid for rid in sender.sent if rid.startswith("trap-01:")}
        wait_until(lambda: {p.item_id for p in ob.parked(limit=None)} == traps, 60, "the trap readings parked")
        listed = json.loads(runner.invoke(cli, ["outbox", "list", "--parked", "--json", "-c", str(config)]).stdout)
        assert {(p["item_id"], p["uplink"]) for p in listed} == {(t, "town") for t in traps}
        assert all("HTTP 400" in p["error"] and "trap-01 is not provisioned here" in p["error"] for p in listed)
        assert trap_states(orion) == []  # the gauges' Device entities arrive; no trap reading does

        orion.clear_faults()  # the town provisioned the trap
        result = runner.invoke(cli, ["outbox", "retry", "--all-parked", "--uplink", "town", "-c", str(config)])
        assert result.exit_code == 0, result.output
        assert result.stdout.splitlines()[-1].startswith(f"{len(traps)} item(s) back in the queue")
        wait_until(lambda: len(trap_states(orion)) >= len(traps), 30, "the retried traps delivered")
        wait_until(lambda: ob.stats().pending == 0, 30, "everything delivered")
        assert ob.stats().parked == 0 and orion.invalid == []

        purged = runner.invoke(cli, ["outbox", "purge", "--delivered", "-c", str(config)])
        assert purged.exit_code == 0, purged.output
        assert purged.stdout.startswith("purged ")
        assert int(purged.stdout.split()[1]) >= len(sender.sent)
        sender.burst(3)  # the daemon carries on: new readings are accepted and delivered after the purge
        wait_until(lambda: ob.stats().delivered >= 3 and ob.stats().pending == 0, 30, "new readings delivered")
    finally:
        daemon.stop()


def test_config_check_warns_before_an_uplink_left_out_of_the_config_lets_go_of_its_queue(runner, tmp_path):
    config = write_config(tmp_path)
    config.write_text(config.read_text() + dedent('''
        [[uplinks]]
        type = "mqtt"
        name = "mqtt"
        host = "127.0.0.1"
        '''))
    store = Store(tmp_path / "state" / "edgegw.db")
    assert store.register_uplinks(["mqtt", "orion"]) == {"mqtt": MQTT, "orion": ORION}
    store.begin()
    for i, pending in enumerate([ORION, ORION, MQTT | ORION, MQTT, 0]):
        add_reading(store, f"river-03:0:{i}", "river-03", NOW, pending)
    store.commit()
    store.close()
    result = runner.invoke(cli, ["config", "check", str(config)])
    assert result.exit_code == 0, result.output
    assert result.stderr == (f"warning: uplink 'orion' is not in this config, and 2 unsent item(s) in "
                             f"{tmp_path / 'state' / 'edgegw.db'} wait for it alone: the daemon will release them "
                             "unsent. Keep its [[uplinks]] entry (same name) until they are delivered.\n")

    store = Store(tmp_path / "state" / "edgegw.db")  # the daemon starts with this config anyway
    assert store.register_uplinks(["mqtt"]) == {"mqtt": MQTT}
    assert store.released == {"orion": {"reading": 2}}
    store.close()
    st = status(tmp_path / "state" / "edgegw.db")
    assert st["released"] == {"reading": 2} and st["dropped"] == {}
    assert ("released 2 readings unsent (the only uplink they waited for left the config)"
            in runner.invoke(cli, ["status", "-c", str(config)]).stdout)
    assert runner.invoke(cli, ["config", "check", str(config)]).stderr == ""  # nothing left to warn about


def test_config_check_says_so_when_the_database_cannot_be_read(runner, tmp_path):
    config = write_config(tmp_path)
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "edgegw.db").write_bytes(b"not a database, a tired installer's copy error" * 100)
    result = runner.invoke(cli, ["config", "check", str(config)])
    assert result.exit_code == 0, result.output  # the config itself is fine
    assert result.stderr.startswith(f"warning: the gateway database {tmp_path / 'state' / 'edgegw.db'} is damaged")
