"""The embedded default uplink: JSON lines, acknowledged after fsync, rotated by size."""

from __future__ import annotations

import json

from edgegw.config import FileUplink
from edgegw.items import Batch
from edgegw.log import Throttle
from edgegw.uplink.file import FileWriterUplink


def test_batches_are_lines_acknowledged_in_order_and_rotated(tmp_path):
    uplink = FileWriterUplink(FileUplink(type="file", path="out", rotate_bytes=4096), tmp_path)
    results, states = [], []
    uplink.start(lambda b, e: results.append((b, e)), lambda s, d: states.append(s))
    body = json.dumps({"type": "reading", "id": "x", "pad": "p" * 900})
    for i in range(12):
        uplink.send(Batch(f"{i:032x}", "gw", [body]))
    uplink.stop()

    assert states == ["up"] and results == [(f"{i:032x}", None) for i in range(12)]
    files = sorted((tmp_path / "out").glob("batches-*.jsonl"))
    assert len(files) > 1  # rotated: each file stops growing once it passed rotate_bytes
    assert all(f.stat().st_size < 4096 + 1200 for f in files)
    batches = [json.loads(line) for f in files for line in f.read_text().splitlines()]
    assert [b["batch_id"] for b in batches] == [f"{i:032x}" for i in range(12)]


def test_unwritable_folder_is_a_transient_failure(tmp_path):
    (tmp_path / "out").write_text("a file where the folder should be")
    uplink = FileWriterUplink(FileUplink(type="file", path="out/sub"), tmp_path)
    results = []
    uplink.on_result = lambda b, e: results.append((b, e))
    uplink.send(Batch("b1", "gw", []))
    (batch, error), = results
    assert batch == "b1" and error is not None and "out/sub" in str(error)


def test_throttle_lets_one_event_through_per_interval_and_counts_the_rest():
    t = Throttle(60.0)
    assert t.allow("garbage", now=0.0) == 0
    assert [t.allow("garbage", now=s) for s in (1.0, 2.0, 59.0)] == [None, None, None]
    assert t.allow("bad_hex", now=2.0) == 0  # another kind is not held back
    assert t.allow("garbage", now=61.0) == 3  # the next line says how many were suppressed
