"""One run per checkpoint at a time: an exclusive ``flock`` on a file beside the checkpoint
(``run.ckpt.lock``), held for the run's lifetime and removed when it ends.

A second run on the same checkpoint is refused at once, before it reads or writes anything. A
lock file that a killed run left behind holds no lock (the kernel drops it with the process), so
the next run takes it over. Where ``fcntl`` is missing (Windows) runs are not locked.
"""

from __future__ import annotations

import errno
import os
import warnings
from pathlib import Path
from typing import Any

from hf_sae_steer.scoring.walk.checkpoint import CheckpointError

# flock is not supported there (some network filesystems): warn and run unlocked.
_UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)}


class RunLock:
    """The lock of the run that writes the checkpoint at ``checkpoint``."""

    def __init__(self, checkpoint: str | os.PathLike[str]) -> None:
        self.checkpoint = Path(checkpoint)
        self.path = self.checkpoint.with_name(self.checkpoint.name + ".lock")
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        try:
            import fcntl
        except ImportError:  # no advisory locks on this platform
            return self
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            while self._fd is None:
                self._fd = self._try(fcntl)
        except OSError as error:
            if error.errno in _UNSUPPORTED:
                warnings.warn(
                    f"Cannot lock {self.path} ({error.strerror}): the filesystem does not support "
                    "locks, so nothing stops a second run on the same checkpoint.",
                    stacklevel=2,
                )
                return self
            raise CheckpointError(
                f"Cannot create the lock {self.path} of checkpoint {self.checkpoint} "
                f"({error.strerror or error}); choose a --checkpoint path in a writable folder."
            ) from None
        return self

    def _try(self, fcntl: Any) -> int | None:
        """The locked descriptor, or None when the file was replaced under us (try again)."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(fd)
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise CheckpointError(
                    f"Checkpoint {self.checkpoint} is in use by another run (it holds "
                    f"{self.path}); wait for that run to end, or choose another --checkpoint path."
                ) from None
            raise
        # The run we waited on may have removed the file between our open and our lock: then
        # our lock is on a file nobody else will open. Lock the one at the path instead.
        try:
            here, ours = os.stat(self.path), os.fstat(fd)
        except FileNotFoundError:
            here = None
        if here is None or (here.st_dev, here.st_ino) != (ours.st_dev, ours.st_ino):
            os.close(fd)
            return None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return fd

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still held: no one else holds this file
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
