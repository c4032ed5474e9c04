"""Advisory file locks, so two processes never run a session or drain the outbox at once.

The kernel drops a lock when its process dies, even by SIGKILL, so a crashed agent never
leaves the rig locked.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

from shaping.rig.errors import RigBusyError


class FileLock:
    """An exclusive, non-blocking lock on a file.

    Args:
        path: the lock file (created if missing).
        what: what the lock protects, for the error message.
    """

    def __init__(self, path: Path, what: str) -> None:
        self.path = path
        self.what = what
        self._file: IO[str] | None = None

    def try_acquire(self) -> bool:
        """Takes the lock if it is free; returns whether this process holds it."""
        if self._file is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = self.path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._file = handle
        return True

    def acquire(self) -> None:
        """Takes the lock or raises RigBusyError naming the process that holds it."""
        if not self.try_acquire():
            holder = self.path.read_text().strip() or "another process"
            raise RigBusyError(f"{self.what} is busy: process {holder} holds {self.path}")

    def release(self) -> None:
        """Gives the lock back."""
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    @property
    def held(self) -> bool:
        """Whether this process holds the lock."""
        return self._file is not None
