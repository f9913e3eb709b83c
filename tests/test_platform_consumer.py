"""The reference platform consumer: first copy of each item id kept, later copies counted and dropped."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from edgegw.platform_consumer import Deduplicator, PlatformConsumer, Tally
from tests.broker import publish
from tests.gateway import wait_until


def batch(gateway: str, *items: dict) -> bytes:
    return json.dumps({"schema": "edgegw.batch/1", "batch_id": "b", "gateway": gateway, "items": list(items)}).encode()


def reading(item_id: str, gateway: str) -> dict:
    return {"type": "reading", "id": item_id, "radio": {"gateway": gateway}}


@given(st.lists(st.sampled_from([f"s{n}:0:{c}" for n in range(5) for c in range(5)]), max_size=60))
def test_within_the_window_each_id_is_first_exactly_once(ids):
    dedup = Deduplicator(window=60)
    firsts = [i for t, i in enumerate(ids) if dedup.first(i, now=1000 + t * 0.1)]
    assert sorted(firsts) == sorted(set(ids))


def test_an_id_older_than_the_window_is_forgotten():
    dedup = Deduplicator(window=10)
    assert dedup.first("a", 0) and not dedup.first("a", 5)
    assert dedup.first("a", 11)  # the platform's upsert keyed by id catches this one


def test_copies_from_overlapping_gateways_count_once_and_each_gateway_is_seen():
    tally = Tally()
    tally.take(batch("gw-1", reading("s1:0:7", "gw-1"), reading("s2:0:1", "gw-1")))
    tally.take(batch("gw-2", reading("s1:0:7", "gw-2")))
    tally.take(batch("gw-1", reading("s1:0:7", "gw-1")))  # a batch sent again after a lost PUBACK
    assert set(tally.readings) == {"s1:0:7", "s2:0:1"}
    assert tally.duplicates == 2
    assert tally.by_gateway == {"gw-1": 3, "gw-2": 1}


def test_the_latest_health_report_of_each_gateway_is_kept():
    tally = Tally()
    for at, depth in (("2026-12-03T10:05:00.000Z", 7), ("2026-12-03T10:00:00.000Z", 3)):  # out of order
        tally.take(batch("gw-1", {"type": "health", "id": f"gw-1:health:{at}", "gateway": "gw-1",
                                  "observed_at": at, "pending": {"town": depth}}))
    assert tally.health["gw-1"]["pending"] == {"town": 7}
    assert tally.health_reports["gw-1"] == 2


def test_a_payload_that_is_not_a_batch_is_counted_and_the_consumer_goes_on():
    tally = Tally()
    tally.take(b"not json")
    tally.take(b'{"items": [{"no": "id"}]}')
    tally.take(batch("gw-1", reading("s1:0:1", "gw-1")))
    assert tally.malformed == 2 and set(tally.readings) == {"s1:0:1"}


def test_consumers_of_one_share_split_the_batches_on_mosquitto(mosquitto):
    tallies = [Tally(), Tally()]
    consumers = [PlatformConsumer([f"127.0.0.1:{mosquitto.port}"], "town/+/batches", t.take, f"platform-{n}",
                                  share="platform").start() for n, t in enumerate(tallies)]
    try:
        assert all(c.subscribed.wait(10) for c in consumers)
        for n in range(20):
            publish("127.0.0.1", mosquitto.port, "town/gw-1/batches", batch("gw-1", reading(f"s1:0:{n}", "gw-1")))
        wait_until(lambda: sum(len(t.readings) for t in tallies) == 20, 10, "20 batches taken")
        assert all(t.readings for t in tallies)  # both took a share
        assert not set(tallies[0].readings) & set(tallies[1].readings)  # and no batch went to both
    finally:
        for c in consumers:
            c.stop()
