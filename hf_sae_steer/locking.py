"""An exclusive lock on a folder, so that several writers to one output take turns.

The lock is a hidden file inside the folder, held with ``flock`` while a writer works and removed
when it is done; a writer that dies drops its lock with its process, so nothing is ever stale.
Where there is no ``flock`` (Windows), writers do not wait for each other.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".hf_sae_steer-lock"  # hf_sae_steer.folders never counts it as a user's file


@contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold the lock of ``folder`` (waiting for other holders) until the block ends."""
    if fcntl is None:
        yield
        return
    path = folder / LOCK_FILE
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                break
        except FileNotFoundError:
            pass
        # The holder before us removed the file after we opened it: that lock guards nothing.
        os.close(fd)
    try:
        yield
    finally:
        os.unlink(path)  # before unlocking: a waiter then sees its file is gone, and retries
        os.close(fd)
