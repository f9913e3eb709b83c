"""Back-pressure on the real daemon: a source reads its next turn only once its last one is committed.

So in a burst the frames not yet read wait in the kernel's tty buffer, not in the daemon's memory,
and a kill -9 loses at most one read turn (the frames read from the port and not yet committed) and
the fewer than WINDOW_FRAMES frames a commit window may hold before it.
A turn is the reads of what the port holds, up to TURN_BYTES (a burst fills it; the pty holds more
behind it), so it is at most ``turn_frames(line)`` frames of a given line length.

What the kernel still holds when the daemon dies is not the daemon's to keep (the port's buffer goes
when the port closes, and pyserial flushes it on open): the kill test takes it out of the pty
itself, before the restart, and checks it is exactly the unread tail of the burst.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from edgegw.radio.emulator import RylrEmulator
from edgegw.radio.rylr import TURN_BYTES
from edgegw.writer import COMMIT_WINDOW_MAX, WINDOW_FRAMES
from tests.gateway import DRIVERS, Daemon, write_config

pytestmark = pytest.mark.slow


def turn_frames(line_bytes: int) -> int:
    """The most frames of ``line_bytes`` (with its \\r\\n) a crash may lose: those completed by one
    turn of at most TURN_BYTES (together with the head of a line carried over from the turn before),
    and the one line whose head that turn took and whose tail it did not."""
    return (TURN_BYTES + line_bytes - 1) // line_bytes + 1


def river_line(n: int) -> str:
    """Frame ``n`` of river-01 (address 21), as the module writes it; a quiet level, no alarm."""
    values = {"level": 1000 + (7 * n) % 1000, "water_temperature": 12.5, "battery": 3.6}
    data = DRIVERS["water_level"].encode(values, n).hex().upper()
    return f"+RCV=21,{len(data)},{data},-80,7.5"


def committed_counters(db: Path) -> list[int]:
    with sqlite3.connect(db) as conn:
        ids = [r[0] for r in conn.execute("SELECT item_id FROM outbox WHERE kind = 'reading' ORDER BY seq")]
    return [int(i.rsplit(":", 1)[1]) for i in ids]  # river-01:0:<counter>


def kill_at_last_byte(tmp_path: Path, frames: int, rate: float | None = None) -> tuple[int, int, int]:
    """Send ``frames`` frames as fast as the pty takes them (or ``rate`` a second), SIGKILL the daemon
    the moment the last byte is in, take what it never read from the pty, restart it and count what
    was committed. Returns (committed, still unread in the kernel, lost: neither)."""
    emulator = RylrEmulator(tmp_path / "rylr0")
    emulator.plug()
    daemon = Daemon(write_config(tmp_path, emulator.link, None, log_level="info"))
    lines = [river_line(n) for n in range(frames)]
    try:
        daemon.start().wait_receiving()
        t0 = time.monotonic()
        for n, line in enumerate(lines):
            if rate is not None:
                time.sleep(max(0.0, t0 + n / rate - time.monotonic()))
            assert emulator.write_line(line), "the pty refused a frame for a second: the daemon stopped reading"
        daemon.kill()
        unread = emulator.take_unread().decode("latin-1").split("\r\n")
        daemon.start().wait_receiving()
        daemon.stop()
    finally:
        daemon.stop()
        emulator.unplug()
    # The unread bytes: maybe the tail of a line whose head the daemon had read, then whole lines.
    tail = [line for line in unread[1:] if line] if unread[0] not in lines else [line for line in unread if line]
    assert tail == lines[frames - len(tail):], "the kernel held something other than the burst's unread tail"
    got = committed_counters(daemon.db)
    assert got == list(range(len(got))), "committed readings are not the head of the burst, in order"
    return len(got), len(tail), frames - len(got) - len(tail)


def test_a_kill_at_the_last_byte_of_a_burst_loses_at_most_one_read_turn_and_a_commit_window(tmp_path):
    # A burst that starts slowly (the sender's first frames) opens a commit window (see
    # edgegw.writer.Writer._group): the turn read into it may join fewer than WINDOW_FRAMES frames
    # read before it. A burst's own turns are larger than that and close the window at once.
    turn = turn_frames(len(river_line(0)) + 2)
    bound = turn + WINDOW_FRAMES - 1
    committed, unread, lost = kill_at_last_byte(tmp_path, 5_000)
    print(f"5,000-frame burst: committed {committed}, unread in the kernel {unread}, lost {lost} "
          f"(bound {bound}: one turn of {TURN_BYTES} bytes, {turn} frames of {len(river_line(0)) + 2} bytes,"
          f" and {WINDOW_FRAMES - 1} more)")
    assert lost <= bound


def vm_kb(pid: int, key: str) -> int:
    for row in Path(f"/proc/{pid}/status").read_text().splitlines():
        if row.startswith(key + ":"):
            return int(row.split()[1])
    raise AssertionError(f"no {key} in /proc/{pid}/status")


def test_a_kill_at_field_rate_loses_at_most_the_frames_of_the_commit_window(tmp_path):
    # At 100 frames/s each frame is a read turn of its own, and the writer lets the source read on
    # into an open transaction for up to COMMIT_WINDOW_MAX (fewer than WINDOW_FRAMES frames): a kill
    # takes those frames, not yet accepted, with it.
    committed, unread, lost = kill_at_last_byte(tmp_path, 500, rate=100)
    print(f"500 frames at 100/s: committed {committed}, unread in the kernel {unread}, lost {lost} "
          f"(window up to {COMMIT_WINDOW_MAX * 1000:g} ms: {COMMIT_WINDOW_MAX * 100:g} frames at this rate;"
          f" bound {WINDOW_FRAMES - 1})")
    assert committed >= 400 and lost < WINDOW_FRAMES


def test_memory_stays_flat_during_a_100_000_frame_burst(tmp_path):
    emulator = RylrEmulator(tmp_path / "rylr0")
    emulator.plug()
    daemon = Daemon(write_config(tmp_path, emulator.link, None, log_level="info"))
    frames = 100_000
    try:
        daemon.start().wait_receiving()
        pid = daemon.proc.pid
        for n in range(300):  # warm up: caches, the first pages of the outbox
            assert emulator.write_line(river_line(n))
        daemon.wait_committed(300)
        before = vm_kb(pid, "VmRSS")
        samples: list[int] = []
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.05) and daemon.proc.poll() is None:
                samples.append(vm_kb(pid, "VmRSS"))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        for n in range(300, frames):
            emulator.write_line(river_line(n))  # a frame refused for a second (the daemon not reading) is dropped
        daemon.wait_committed(frames - emulator.dropped, timeout=300)
        done.set()
        sampler.join()
        peak = vm_kb(pid, "VmHWM")
        print(f"100,000-frame burst: RSS before {before / 1024:.1f} MB, highest sample {max(samples) / 1024:.1f} MB, "
              f"VmHWM {peak / 1024:.1f} MB, frames dropped by the module {emulator.dropped}")
        assert peak - before < 16 * 1024
    finally:
        daemon.stop()
        emulator.unplug()
