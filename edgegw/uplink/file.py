"""The embedded default uplink: batches appended as JSON lines to files in the data directory.

For sites without coverage (a maintainer collects the files on a USB stick) and for the demo. A
batch counts as delivered once its line is written and fsynced. Files rotate by size; a rotated
file is never written again, so it can be copied away while the daemon runs.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import BinaryIO

from edgegw.config import FileUplink
from edgegw.errors import TransientUplinkError
from edgegw.items import Batch
from edgegw.uplink import OnResult, OnState


class FileWriterUplink:
    def __init__(self, config: FileUplink, data_dir: Path):
        self.name = config.name
        self.dir = config.path if config.path.is_absolute() else Path(data_dir) / config.path
        self.rotate_bytes = config.rotate_bytes
        self._lock = threading.Lock()
        self._file: BinaryIO | None = None

    def start(self, on_result: OnResult, on_state: OnState) -> None:
        self.on_result = on_result
        self.dir.mkdir(parents=True, exist_ok=True)
        on_state("up", str(self.dir))

    def ready(self) -> bool:
        return True

    def send(self, batch: Batch) -> None:
        batch_id, payload = batch.batch_id, batch.json()
        try:
            with self._lock:
                f = self._current()
                f.write(payload + b"\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:  # disk full or USB stick pulled: keep the items, try again later
            self._close()
            self.on_result(batch_id, TransientUplinkError(f"{self.dir}: {exc}"))
        else:
            self.on_result(batch_id, None)

    def _current(self):
        if self._file is not None and self._file.tell() >= self.rotate_bytes:
            self._close()
        if self._file is None:
            # UTC to the microsecond: names sort in the order the files were written.
            now = time.time()
            stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f".{int(now * 1e6) % 1_000_000:06d}Z"
            path = self.dir / f"batches-{stamp}.jsonl"
            self._file = open(path, "ab")  # noqa: SIM115  (open across batches until it rotates)
            # The new name must survive a power cut too: fsync the directory entry once.
            dir_fd = os.open(self.dir, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        return self._file

    def _close(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
            self._file = None

    def stop(self) -> None:
        with self._lock:
            self._close()
