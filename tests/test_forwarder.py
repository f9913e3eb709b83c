"""The forwarder against a real outbox: which items go, in which order, after acks and failures.

The uplink here is a scripted one: it answers each batch at once with the next outcome of a list,
as the file uplink answers after its fsync. Acks are recorded in the store the moment they come, as
the writer would record them.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from edgegw.errors import TransientUplinkError
from edgegw.forwarder import RESCAN_EVERY, TICK, Ack, Forwarder
from edgegw.items import Batch
from edgegw.model import PRIORITY_ALARM, Reading, boot_id
from edgegw.store import Store, open_reader
from edgegw.store.queue import batch_items
from tests.gateway import wait_until


class ScriptedUplink:
    name = "scripted"

    def __init__(self, outcomes: list[Exception | None]):
        self.outcomes = outcomes  # for the first batches; every later one is acknowledged
        self.sent: list[list[str]] = []  # item ids of each batch, in the order sent

    def start(self, on_result, on_state) -> None:
        self.on_result = on_result
        on_state("up", "")

    def ready(self) -> bool:
        return True

    def send(self, batch: Batch) -> None:
        self.sent.append([item["id"] for item in batch.items()])
        outcome = self.outcomes.pop(0) if self.outcomes else None
        self.on_result(batch.batch_id, outcome)

    def stop(self) -> None:
        pass


def outbox_of(tmp_path: Path, readings: int) -> tuple[Store, int]:
    """A fresh outbox holding ``readings`` readings for the scripted uplink; the store and its bit."""
    store = Store(tmp_path / "edgegw.db")
    bit = store.register_uplinks(["scripted"])["scripted"]
    store.begin()
    for i in range(readings):
        store.add_item(f"d:0:{i}", "reading", 0, "d", 2e9 + i, 0.0, boot_id(), b"x", f'{{"id":"d:0:{i}"}}', bit, 1.0)
    store.commit()
    return store, bit


def forward(tmp_path: Path, readings: int, outcomes: list[Exception | None], max_items: int = 10,
            unrecorded_acks: int = 0) -> list[list[str]]:
    """Put ``readings`` readings in a fresh outbox, forward until all are delivered; the batches sent.

    The first ``unrecorded_acks`` acks are released without being recorded, as the writer does
    when their commit fails.
    """
    lost = [unrecorded_acks]
    store, bit = outbox_of(tmp_path, readings)

    def record(event) -> None:
        if isinstance(event, Ack) and lost[0]:
            lost[0] -= 1
            forwarder.recorded(event.seqs)
        elif isinstance(event, Ack):
            store.begin()
            store.acked(event.bit, event.seqs, event.wall)
            store.commit()
            forwarder.recorded(event.seqs)

    uplink = ScriptedUplink(outcomes)
    forwarder = Forwarder(uplink, bit, store.path, "gw", max_items, 1 << 20, 1, record)
    try:
        with forwarding(forwarder):
            wait_until(lambda: not store.conn.execute("SELECT count(*) FROM outbox_items WHERE pending != 0").fetchone()[0],
                       30, "every item delivered")
    finally:
        store.close()
    return uplink.sent


def test_the_backlog_goes_in_order_each_item_once(tmp_path):
    sent = forward(tmp_path, 95, [])
    assert [i for batch in sent for i in batch] == [f"d:0:{i}" for i in range(95)]
    assert [len(b) for b in sent] == [10] * 9 + [5]


def test_a_failed_batch_goes_again_before_the_items_after_it(tmp_path):
    sent = forward(tmp_path, 50, [None, TransientUplinkError("platform busy")])
    first_two = [f"d:0:{i}" for i in range(10)], [f"d:0:{i}" for i in range(10, 20)]
    assert sent[:3] == [first_two[0], first_two[1], first_two[1]]
    assert [i for batch in sent[2:] for i in batch] == [f"d:0:{i}" for i in range(10, 50)]


def test_items_whose_ack_was_not_recorded_go_again(tmp_path):
    sent = forward(tmp_path, 50, [], unrecorded_acks=1)
    ids = [i for batch in sent for i in batch]
    assert sorted(set(ids)) == sorted(f"d:0:{i}" for i in range(50))
    assert [i for i in ids if ids.count(i) > 1] == [f"d:0:{i}" for i in range(10)] * 2


def test_a_writer_behind_on_acks_holds_the_forwarder_back(tmp_path):
    """Acks the writer has not recorded yet hold their batch's seqs: at most about 2 x max_inflight
    batches of them, then the forwarder waits for the writer instead of reading on."""
    store, bit = outbox_of(tmp_path, 100)
    waiting: list[Ack] = []
    uplink = ScriptedUplink([])
    forwarder = Forwarder(uplink, bit, store.path, "gw", 10, 1 << 20, 2,
                          lambda event: waiting.append(event) if isinstance(event, Ack) else None)

    def writer_catches_up() -> bool:
        for ack in list(waiting):
            waiting.remove(ack)
            store.begin()
            store.acked(ack.bit, ack.seqs, ack.wall)
            store.commit()
            forwarder.recorded(ack.seqs)
        return not store.conn.execute("SELECT count(*) FROM outbox_items WHERE pending != 0").fetchone()[0]

    try:
        with forwarding(forwarder):
            wait_until(lambda: len(waiting) >= 4, 10, "four acks waiting for the writer")
            for _ in range(2):  # wake it twice: by the second wait it has looked for work since the first
                forwarder.wake.set()
                wait_until(lambda: not forwarder.wake.is_set(), 10, "the forwarder waiting (it clears the flag)")
            assert [len(b) for b in uplink.sent] == [10] * 4  # 2 x max_inflight (2) x max_items (10)
            wait_until(writer_catches_up, 20, "everything delivered")
            assert sorted(i for b in uplink.sent for i in b) == sorted(f"d:0:{i}" for i in range(100))
    finally:
        store.close()


def test_a_batchs_items_come_out_whole_in_the_order_asked_whatever_their_values_hold(tmp_path):
    # The items of a batch are read as one row, joined by a record separator (see Forwarder._items).
    store = Store(tmp_path / "edgegw.db")
    store.describe("gw", {"water_level": {}})
    bit = store.register_uplinks(["scripted"])["scripted"]
    values = {"note": "a\x1eb\nc,d\\", "level": 5}
    store.begin()
    seqs = [store.add_reading(Reading(f"d:0:{i}", "d", "water_level", 2e9, "synced", i, values, "lora0", 21,
                                      -80.0, 7.5, 1.0, "boot"), b"\x1e", bit, 2e9) for i in range(3)]
    store.add_item("alarm:1", "alarm", 2, "d", 2e9, 0.0, "boot", None, json.dumps({"message": "x\x1ey\n"}), bit, 2e9)
    store.commit()
    reader = open_reader(store.path)
    items = batch_items(reader, [seqs[2], 4, seqs[0], 999, seqs[1]])
    reader.close()
    assert list(items) == [seqs[2], 4, seqs[0], seqs[1]]
    assert [json.loads(body).get("values") for body in items.values()] == [values, None, values, values]
    assert json.loads(items[4]) == {"message": "x\x1ey\n"}


def commit_new(store: Store, bit: int, forwarder: Forwarder, ids: list[str], priority: int = 0,
               burst: bool = False) -> None:
    """Commit new items as the writer does (alarms when ``priority``), then notify the forwarder."""
    store.begin()
    for item_id in ids:
        store.add_item(item_id, "alarm" if priority else "reading", priority, "d", 2e9, 0.0, boot_id(), b"x",
                       f'{{"id":"{item_id}"}}', bit, 1.0)
    store.commit()
    forwarder.notify(urgent=bool(priority), items=len(ids), burst=burst)


@contextmanager
def forwarding(forwarder: Forwarder) -> Iterator[list[int]]:
    """Run ``forwarder`` in a thread of its own until the block ends; yields the turns of its loop
    (one each time it goes to sleep)."""
    turns: list[int] = []
    sleep = forwarder._sleep
    forwarder._sleep = lambda: turns.append(1) or sleep()  # type: ignore[method-assign]
    stop = threading.Event()
    thread = threading.Thread(target=forwarder.run, args=(stop,))
    thread.start()
    try:
        yield turns
    finally:
        stop.set()
        forwarder.wake.set()
        thread.join()


def test_a_full_batch_or_a_burst_goes_without_waiting_max_wait(tmp_path):
    """In a burst the forwarder may catch up between two commits: what follows fills batches at once,
    and a burst's last small commits are its tail: waiting ``max_wait`` would only delay them."""
    store, bit = outbox_of(tmp_path, 0)
    uplink = ScriptedUplink([])
    forwarder = Forwarder(uplink, bit, store.path, "gw", 4, 1 << 20, 1, [].append, max_wait=60.0)
    try:
        with forwarding(forwarder):
            wait_until(lambda: forwarder._dry, 10, "the forwarder caught up")
            commit_new(store, bit, forwarder, ["a:0", "a:1"])
            time.sleep(0.5)
            assert uplink.sent == [], "half a batch waits for more"
            commit_new(store, bit, forwarder, ["a:2", "a:3", "a:4"])
            wait_until(lambda: uplink.sent, 10, "the full batch, long before max_wait")
            assert uplink.sent[0] == ["a:0", "a:1", "a:2", "a:3"]
            wait_until(lambda: len(uplink.sent) == 2 and forwarder._dry, 10, "the rest, sent behind it")
            commit_new(store, bit, forwarder, ["b:0", "b:1"], burst=True)  # a full group of the writer's
            commit_new(store, bit, forwarder, ["b:2"])  # the burst's last turn, a small one
            wait_until(lambda: sum(map(len, uplink.sent)) == 8, 10, "the burst's tail, long before max_wait")
    finally:
        store.close()


def test_new_readings_wait_max_wait_to_share_a_batch_and_an_alarm_does_not(tmp_path):
    """Caught up, the forwarder lets new plain readings wait ``max_wait`` from the first commit that
    brought them, so a field's commits share one batch; an alarm's commit sends it at once."""
    store, bit = outbox_of(tmp_path, 5)
    acks: list[Ack] = []
    uplink = ScriptedUplink([])
    forwarder = Forwarder(uplink, bit, store.path, "gw", 100, 1 << 20, 1, acks.append, max_wait=2.0)
    try:
        with forwarding(forwarder):
            wait_until(lambda: len(uplink.sent) == 1, 10, "the backlog, sent at once at start")
            wait_until(lambda: forwarder._dry, 10, "the forwarder caught up")
            for i in range(3):  # three commits of a field, each waking the writer's forwarders
                commit_new(store, bit, forwarder, [f"new:{i}"])
            forwarder.wake.set()  # even woken, it lets them wait
            time.sleep(0.5)
            assert len(uplink.sent) == 1
            wait_until(lambda: len(uplink.sent) == 2, 10, "the new readings, after max_wait")
            assert uplink.sent[1] == ["new:0", "new:1", "new:2"]
            wait_until(lambda: forwarder._dry, 10, "the forwarder caught up again")
            commit_new(store, bit, forwarder, ["plain"])
            commit_new(store, bit, forwarder, ["alarm"], PRIORITY_ALARM)
            wait_until(lambda: len(uplink.sent) >= 3, 1.5, "the alarm, well before max_wait")
            assert uplink.sent[2] == ["alarm"]  # alone: the plain reading may follow it now, or wait on
    finally:
        store.close()


def test_new_readings_for_a_down_uplink_do_not_spin_the_loop(tmp_path):
    """Items that waited their max_wait while the uplink is down cannot go: the loop sleeps its tick
    (the uplink's return wakes it) instead of waking at once, again and again, starving the writer."""
    store, bit = outbox_of(tmp_path, 0)
    uplink = ScriptedUplink([])
    up = threading.Event()
    up.set()
    uplink.ready = up.is_set  # type: ignore[method-assign]
    forwarder = Forwarder(uplink, bit, store.path, "gw", 100, 1 << 20, 1, [].append, max_wait=0.1)
    try:
        with forwarding(forwarder) as turns:
            wait_until(lambda: forwarder._dry, 10, "the forwarder caught up")
            up.clear()
            commit_new(store, bit, forwarder, ["new:0"])
            time.sleep(1.0)  # ten times max_wait
            assert len(turns) < 20, f"{len(turns)} turns of the loop in a second, with nothing it could send"
            up.set()
            forwarder.wake.set()  # as the uplink's state change does
            wait_until(lambda: uplink.sent == [["new:0"]], 10, "the reading, once the uplink is back")
    finally:
        store.close()


def test_an_idle_forwarder_rests_past_its_tick_and_new_readings_wake_it(tmp_path):
    """Caught up, nothing in flight, the uplink ready: the loop sleeps until its rescan instead of
    every tick, and the writer's notify wakes it, so new readings still go after max_wait."""
    store, bit = outbox_of(tmp_path, 0)
    uplink = ScriptedUplink([])
    forwarder = Forwarder(uplink, bit, store.path, "gw", 100, 1 << 20, 1, [].append, max_wait=0.2)
    try:
        with forwarding(forwarder) as turns:
            wait_until(lambda: forwarder._dry and forwarder._resting, 10, "the forwarder caught up, resting")
            before = len(turns)
            time.sleep(3 * TICK)
            assert len(turns) - before <= 1, "an idle forwarder woke every tick"
            commit_new(store, bit, forwarder, ["new:0"])
            wait_until(lambda: uplink.sent == [["new:0"]], RESCAN_EVERY / 2, "the reading, well before the rescan")
    finally:
        store.close()
