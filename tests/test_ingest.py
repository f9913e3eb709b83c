"""Frame -> reading: ids from what the device sent, duplicates, counter wrap and device reset."""

from __future__ import annotations

import json
import sqlite3
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgegw.config import Config
from edgegw.drivers import Decoded, DriverRegistry, load_drivers
from edgegw.ingest import Duplicate, Ingest
from edgegw.model import Frame, Reading, Reject
from edgegw.store import LATE_WINDOW, SCHEMA_VERSION, Store

DRIVERS = load_drivers()
WL = DRIVERS["water_level"]


def make(tmp_path, name="gw.db", gateway_id="gw-a", water_level=WL) -> Ingest:
    """An ingest on a fresh store; ``water_level`` stands in for that driver (a broken one, say)."""
    drivers = DriverRegistry({**DRIVERS.drivers, "water_level": water_level}, DRIVERS.origins)
    config = Config.model_validate({
        "gateway_id": gateway_id,
        "sources": [{"type": "rylr", "name": "lora0", "port": "/dev/null"}],
        # rate_limit 0: these tests send runs of frames far beyond a field's rate (test_auth tests the limit)
        "devices": [{"id": "river-01", "address": 21, "driver": "water_level", "rate_limit": 0},
                    {"id": "trap-01", "address": 17, "driver": "trap", "rate_limit": 0}],
    })
    return Ingest(config, drivers, Store(tmp_path / name), uplink_mask=1)


def frame(counter: int, level: int = 1000, address: int = 21) -> Frame:
    payload = WL.encode({"level": level, "water_temperature": 10.0, "battery": 3.6}, counter)
    return Frame("lora0", address, payload, -80.0, 7.0)


def handle(ingest: Ingest, *frames: Frame) -> list:
    ingest.store.begin()
    out = [ingest.handle(f) for f in frames]
    ingest.store.commit()
    return out


def ids(results) -> list[str]:
    return [r.reading_id for r in results if isinstance(r, Reading)]


def test_reading_id_comes_from_device_counter_not_gateway(tmp_path):
    a, b = make(tmp_path, "a.db"), make(tmp_path, "b.db", "gw-b")  # a second gateway with overlapping coverage
    ra, rb = handle(a, frame(5))[0], handle(b, frame(5))[0]
    assert ra.reading_id == rb.reading_id == "river-01:0:5"
    items = [json.loads(i.store.conn.execute("SELECT item FROM outbox_items").fetchone()[0]) for i in (a, b)]
    assert [i["radio"]["gateway"] for i in items] == ["gw-a", "gw-b"]
    assert items[0]["id"] == items[1]["id"] and items[0]["values"]["level"] == 1000


def test_same_frame_twice_is_one_reading(tmp_path):
    ingest = make(tmp_path)
    results = handle(ingest, frame(1), frame(1), frame(2))
    assert ids(results) == ["river-01:0:1", "river-01:0:2"]
    assert isinstance(results[1], Duplicate)
    assert ingest.store.devices["river-01"].duplicates == 1


def test_duplicate_across_commits_and_restart(tmp_path):
    handle(make(tmp_path), frame(1))
    again = make(tmp_path)  # a restarted daemon: registry state comes from the database
    assert isinstance(handle(again, frame(1))[0], Duplicate)


def test_device_reset_starts_a_new_epoch(tmp_path):
    ingest = make(tmp_path)
    handle(ingest, frame(0), frame(1), frame(2))
    # the sensor rebooted: counter 0 again, with different bytes
    assert ids(handle(ingest, frame(0, level=1200), frame(1, level=1201))) == ["river-01:1:0", "river-01:1:1"]


def test_counters_going_back_again_and_again_are_one_log_line_a_minute(tmp_path):
    # Anyone in range can send a plain device's address random counters: each that went back
    # logged a line, without bound for a device with no rate limit.
    from structlog.testing import capture_logs

    ingest = make(tmp_path)
    with capture_logs() as logs:
        results = handle(ingest, *(frame(counter) for counter in (5000, 10, 4000, 20, 3000, 30)))
    assert ids(results) == ["river-01:0:5000", "river-01:1:10", "river-01:1:4000", "river-01:2:20",
                            "river-01:2:3000", "river-01:3:30"]  # three counters went back
    epochs = [e for e in logs if e["event"] == "frame counter went back: new counter epoch"]
    assert len(epochs) == 1 and epochs[0]["epoch"] == 1


def test_counter_wrap_starts_a_new_epoch(tmp_path):
    ingest = make(tmp_path)
    assert ids(handle(ingest, frame(65534), frame(65535), frame(0), frame(1))) == [
        "river-01:0:65534", "river-01:0:65535", "river-01:1:0", "river-01:1:1"]


def test_late_frame_within_window_keeps_epoch(tmp_path):
    ingest = make(tmp_path)
    assert ids(handle(ingest, frame(10), frame(12), frame(11))) == ["river-01:0:10", "river-01:0:12", "river-01:0:11"]


def test_rejects_name_reason_and_device(tmp_path):
    ingest = make(tmp_path)
    unknown, short, ok = handle(ingest, frame(1, address=99), Frame("lora0", 21, b"\x01\x02"), frame(3))
    assert isinstance(unknown, Reject) and unknown.reason == "unknown_device" and unknown.address == 99
    assert isinstance(short, Reject) and (short.reason, short.device_id) == ("wrong_length", "river-01")
    assert isinstance(ok, Reading)


def test_driver_bug_is_a_reject_not_a_crash(tmp_path):
    class Broken(type(WL)):
        def decode(self, payload):
            raise ZeroDivisionError("oops")

    (result,) = handle(make(tmp_path, water_level=Broken()), frame(1))
    assert isinstance(result, Reject) and result.reason == "driver_error" and "ZeroDivisionError" in result.detail


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40), st.booleans()), min_size=1, max_size=60))
def test_ids_unique_and_retransmissions_dropped(tmp_path_factory, sends):
    """Whatever order of new frames and retransmissions: one reading per distinct frame, ids unique."""
    ingest = make(tmp_path_factory.mktemp("h"))
    counter, frames, distinct = 0, [], 0
    for step, retransmit in sends:
        if retransmit and frames:
            frames.append(frames[-1])
        else:
            counter += 1 + step % 3
            frames.append(frame(counter, level=counter))
            distinct += 1
    results = handle(ingest, *frames)
    got = ids(results)
    assert len(got) == len(set(got)) == distinct
    assert sum(isinstance(r, Duplicate) for r in results) == len(frames) - distinct


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 65535), st.integers(1, LATE_WINDOW))
def test_new_frames_never_collide_with_stored_ones(tmp_path_factory, start, n):
    """A long run of frames across a wrap never produces an id already in the outbox."""
    ingest = make(tmp_path_factory.mktemp("w"))
    frames = [frame((start + i) % 65536, level=i) for i in range(n)]
    got = ids(handle(ingest, *frames))
    assert len(got) == n == len(set(got))


def test_rollback_forgets_the_group_and_reloads_the_registry(tmp_path):
    ingest = make(tmp_path)
    handle(ingest, frame(1))
    ingest.store.begin()
    ingest.handle(frame(2))
    ingest.store.rollback()  # as the writer does when a commit fails
    ingest.store.rollback()  # and a second time is harmless
    assert ingest.store.devices["river-01"].last_counter == 1
    assert ids(handle(ingest, frame(2))) == ["river-01:0:2"]


def reference_ids(frames: list[tuple[int, bytes]]) -> list[str | None]:
    """The rules as the outbox's index on every item id applied them (schema 4): each counter that
    went back was looked up among all items stored. None for a duplicate."""
    stored: dict[str, bytes] = {}
    epoch, last, out = 0, None, []
    for counter, payload in frames:
        if last is None or counter > last:
            last = counter
        else:
            earlier = stored.get(f"river-01:{epoch}:{counter}")
            if earlier == payload:
                out.append(None)
                continue
            if earlier is not None or last - counter > LATE_WINDOW:
                epoch, last = epoch + 1, counter
        stored[f"river-01:{epoch}:{counter}"] = payload
        out.append(f"river-01:{epoch}:{counter}")
    return out


# A frame: a step from the last counter (mostly on, sometimes back, now and then far back or across
# a wrap), or a copy of an earlier frame; a level from a few values, so that equal bytes recur.
steps = st.one_of(st.integers(1, 3), st.integers(-20, 0), st.integers(-LATE_WINDOW - 5, -LATE_WINDOW + 5),
                  st.integers(-65535, 65535))
frames_of = st.lists(st.tuples(st.booleans(), steps, st.integers(0, 3), st.integers(0, 1000)), min_size=1, max_size=80)


@settings(max_examples=200, deadline=None)
@given(frames_of, st.integers(1, 79))
def test_duplicates_and_epochs_are_what_an_index_on_every_id_found(tmp_path_factory, plan, restart_at):
    """Without an index on reading ids (the device's window of counters, its recent frames in
    memory), every frame gets the id, or the duplicate verdict, that a lookup of every stored id gave;
    a restart in the middle changes nothing."""
    sent: list[tuple[int, bytes]] = []
    counter = 100
    for copy, step, level, pick in plan:
        if copy and sent:
            sent.append(sent[pick % len(sent)])
        else:
            counter = (counter + step) % 65536
            sent.append((counter, frame(counter, level=1000 + level).payload))
    path = tmp_path_factory.mktemp("ref")
    ingest, got = make(path), []
    for i, (_, payload) in enumerate(sent):
        if i == restart_at:
            ingest.store.close()
            ingest = make(path)
        (result,) = handle(ingest, Frame("lora0", 21, payload, -80.0, 7.0))
        got.append(result.reading_id if isinstance(result, Reading) else None)
    assert got == reference_ids(sent)


def test_a_copy_accepted_more_than_an_hour_ago_is_a_new_reading_in_a_new_epoch(tmp_path):
    ingest = make(tmp_path)
    handle(ingest, frame(1), frame(2))
    ingest.store.conn.execute("UPDATE outbox SET accepted_at = accepted_at - 3601 WHERE item_id = 'river-01:0:1'")
    assert ids(handle(ingest, frame(1), frame(2))) == ["river-01:1:1", "river-01:1:2"]


def test_a_schema_4_database_finds_the_same_duplicates_once_its_id_index_is_gone(tmp_path):
    ingest = make(tmp_path)
    handle(ingest, frame(10), frame(12), frame(15))
    store = ingest.store
    store.park("a", 1, 1, "refused", 5.0)  # river-01:0:10
    store.close()
    db = sqlite3.connect(tmp_path / "gw.db")
    db.executescript("""
        DROP INDEX outbox_uncounted; CREATE UNIQUE INDEX outbox_item ON outbox(item_id);
        ALTER TABLE devices DROP COLUMN seen; ALTER TABLE parked DROP COLUMN seq;
        UPDATE meta SET value = '4' WHERE key = 'schema_version';""")
    db.close()
    again = make(tmp_path)
    indexes = {n for (n,) in again.store.conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "outbox_item" not in indexes and "outbox_uncounted" in indexes
    assert again.store.conn.execute("SELECT item_id, seq FROM parked").fetchall() == [("river-01:0:10", 1)]
    # 12 arrived, 11 never did: a copy of 12 is a duplicate, 11 a late frame, not a new epoch.
    results = handle(again, frame(12), frame(11))
    assert isinstance(results[0], Duplicate) and ids(results) == ["river-01:0:11"]


@pytest.mark.parametrize("decoded, problem", [
    (Decoded({"level": float("nan")}, 5), "level is nan"),
    (Decoded({"level": 2**64}, 5), "level is 18446744073709551616"),
    (Decoded({"level": object()}, 5), "level is a object"),
    (Decoded({"level": [1, 2]}, 5), "level is a list"),
    (Decoded({7: 1}, 5), "value name 7"),
    (Decoded({"level": 1}, 2**64), "counter 18446744073709551616"),
    (Decoded({"level": 1}, -1), "counter -1"),
    (Decoded({"level": 1}, True), "counter True"),
    (Decoded({"level": 1}, 5, 2**63), "epoch 9223372036854775808"),
    ({"level": 1}, "not Decoded"),
])
def test_a_drivers_unfit_result_costs_its_frame_not_the_group(tmp_path, decoded, problem):
    # A custom driver is code we did not write: a NaN failed the render of every batch it was in,
    # an object or a counter past 64 bits the commit of every frame heard with it.
    class Odd(type(WL)):
        def decode(self, payload):
            return decoded if payload == b"odd" else WL.decode(payload)

    ingest = make(tmp_path, water_level=Odd())
    odd, good = handle(ingest, Frame("lora0", 21, b"odd", -80.0, 7.0), frame(1))
    assert isinstance(odd, Reject) and odd.reason == "driver_error" and problem in odd.detail
    assert odd.detail.startswith("water_level: ") and ids([good]) == ["river-01:0:1"]
    (item,) = ingest.store.conn.execute("SELECT item FROM outbox_items").fetchone()
    assert json.loads(item)["values"]["level"] == 1000


def test_only_the_last_hours_frames_are_kept_in_memory(tmp_path, monkeypatch):
    # A town's device sends a few frames an hour: it costs those few entries, not 256.
    ingest, now = make(tmp_path), [2e9]
    monkeypatch.setattr(time, "time", lambda: now[0])
    handle(ingest, frame(1), frame(2))
    now[0] += 3601
    assert ids(handle(ingest, frame(3))) == ["river-01:0:3"]
    assert list(ingest.recent["river-01"]) == [3]
    assert ids(handle(ingest, frame(2))) == ["river-01:1:2"]  # a copy from over an hour ago: a new epoch


def test_frames_lost_are_the_gaps_in_a_devices_counter_and_a_late_frame_takes_one_back(tmp_path):
    ingest = make(tmp_path)
    handle(ingest, frame(1), frame(2), frame(5), frame(6))  # 3 and 4 missing
    assert ingest.store.devices["river-01"].lost == 2
    handle(ingest, frame(4), frame(4))  # 4 arrives late (then a copy of it): one gap filled
    assert ingest.store.devices["river-01"].lost == 1
    handle(ingest, frame(3), frame(6 + LATE_WINDOW))  # as far ahead as the window: every frame between is lost
    assert ingest.store.devices["river-01"].lost == LATE_WINDOW - 1
    handle(ingest, frame(7 + 2 * LATE_WINDOW))  # further: a counter that skipped ahead (saved in steps), not loss
    assert ingest.store.devices["river-01"].lost == LATE_WINDOW - 1
    ingest.store.close()
    again = make(tmp_path)  # written with the device's row at the commit, read back at start
    assert again.store.devices["river-01"].lost == LATE_WINDOW - 1


def test_a_schema_6_database_gains_lost_frames_and_the_rejects_radio_figures(tmp_path):
    ingest = make(tmp_path)
    handle(ingest, frame(1), frame(3))
    ingest.store.close()
    db = sqlite3.connect(tmp_path / "gw.db")
    db.executescript("""
        ALTER TABLE devices DROP COLUMN lost; ALTER TABLE rejects DROP COLUMN rssi; ALTER TABLE rejects DROP COLUMN snr;
        INSERT INTO rejects(at, source, reason, address) VALUES (1.0, 'lora0', 'unknown_device', 44);
        UPDATE meta SET value = '6' WHERE key = 'schema_version';""")
    db.close()
    again = make(tmp_path)
    store = again.store
    assert store.conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (str(SCHEMA_VERSION),)
    assert store.devices["river-01"].lost == 0  # not counted before the upgrade
    assert store.conn.execute("SELECT address, rssi, snr FROM rejects").fetchall() == [(44, None, None)]
    (unknown,) = handle(again, Frame("lora0", 44, b"\x02", -108.0, -8.0))
    assert isinstance(unknown, Reject) and (unknown.rssi, unknown.snr) == (-108.0, -8.0)
    with store.transaction():  # as the writer stores it
        store.add_reject(unknown.source, unknown.reason, unknown.detail, unknown.address, None, unknown.raw,
                         unknown.wall, unknown.rssi, unknown.snr)
    assert ids(handle(again, frame(5))) == ["river-01:0:5"] and store.devices["river-01"].lost == 1
    assert store.conn.execute("SELECT lost FROM devices WHERE id = 'river-01'").fetchone() == (1,)
    assert store.conn.execute("SELECT address, rssi, snr FROM rejects ORDER BY id").fetchall() == [
        (44, None, None), (44, -108.0, -8.0)]
