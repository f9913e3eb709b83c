"""Keep glibc's malloc from hoarding memory the daemon has freed.

Small Python objects live in Python's own arenas; glibc holds SQLite's work memory and large
objects such as the batch payloads, about 180 kB each, copied a few times on their way to the
socket. Its defaults suit short programs, not a daemon on a 512 MB board:

* every thread that allocates gets an arena of its own, and memory freed in one is never reused by
  another thread (at the peak of a drain one thread's arena held 5 MB);
* after a large block is freed, the threshold above which blocks get their own mapping rises to its
  size, so every later batch lands in the heap, where freed space is rarely handed back.

Measured: peak RSS while a million pending readings drain, the daemon started on such a database,
was 50.5-58 MB with glibc's defaults (six runs) and 48.5-50 MB with these settings (five runs).
scripts/bench.py, which also sends alarms during that drain, is noisier: 50.3 and 52.8 MB (two
runs) against 51.1-52.6 MB before.
"""

from __future__ import annotations

import ctypes

# mallopt parameters, from glibc's malloc.h
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8

SETTINGS = {
    M_ARENA_MAX: 1,  # threads share one arena: the GIL serialises most allocation anyway
    M_MMAP_THRESHOLD: 64 * 1024,  # fixed: batch payloads get a mapping of their own, unmapped when freed
    M_TRIM_THRESHOLD: 64 * 1024,  # hand the top of the heap back once 64 kB of it is free
}


def limit_heap_growth() -> bool:
    """Apply :data:`SETTINGS` through glibc's ``mallopt``; False where that is not available (musl, macOS).

    Call it before starting threads: an arena, once a thread has one, stays.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the symbols already loaded: libc's, if it has one
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in SETTINGS.items())
