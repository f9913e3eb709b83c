"""The outbox's bookkeeping on a real SQLite file: acknowledgements touch exactly the rows acked."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from edgegw.store import Store, runs


@given(st.lists(st.integers(0, 200), max_size=60))
def test_runs_cover_exactly_the_seqs(seqs):
    covered = [s for lo, hi in runs(seqs) for s in range(lo, hi + 1)]
    assert covered == sorted(set(seqs))
    assert all(b[0] > a[1] + 1 for a, b in zip(runs(seqs), runs(seqs)[1:]))  # maximal runs


@settings(max_examples=40, deadline=None)
@given(st.sets(st.integers(1, 40)), st.sets(st.integers(1, 40)))
def test_an_ack_clears_only_its_rows_and_only_its_uplink(tmp_path_factory, first, second):
    store = Store(tmp_path_factory.mktemp("store") / "edgegw.db")
    bits = store.register_uplinks(["a", "b"])
    store.begin()
    for i in range(1, 41):
        store.add_item(f"d:0:{i}", "reading", 0, "d", float(i), 0.0, "boot", b"x", "{}", bits["a"] | bits["b"], 1.0)
    store.acked(bits["a"], sorted(first), 2.0)
    store.acked(bits["b"], sorted(second), 3.0)
    store.commit()
    rows = {seq: (pending, delivered) for seq, pending, delivered
            in store.conn.execute("SELECT seq, pending, delivered_at FROM outbox")}
    for seq, (pending, delivered) in rows.items():
        assert bool(pending & bits["a"]) == (seq not in first)
        assert bool(pending & bits["b"]) == (seq not in second)
        assert (delivered is not None) == (seq in first and seq in second)
    store.close()
