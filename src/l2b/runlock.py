"""One run per run directory: an OS file lock held while a run trains in it (released by the
kernel when the process ends, even on kill -9), and writes that never leave half a file.

A second ``l2b train`` into a locked directory stops in one line naming the holder's pid, before
it touches anything; a write that runs out of space (ENOSPC, or a file-size limit) stops in one
line naming the directory and the space it needed, removes its temporary file and keeps the last
good version of the file it was replacing.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Any, Callable

LOCK_NAME = ".lock"
SPACE_ERRNOS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


class RunLock:
    """An exclusive, non-blocking ``flock`` on ``OUT/.lock`` that holds the owner's pid."""

    def __init__(self, out: Path) -> None:
        self.out, self.fh, self.created = Path(out), None, []

    def acquire(self) -> "RunLock":
        try:
            import fcntl
        except ImportError:  # not a POSIX system: no lock, as before
            return self
        self.created = [p for p in reversed([self.out, *self.out.parents]) if not p.exists()]
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            fh = open(self.out / LOCK_NAME, "a+")
        except OSError as err:
            self.abandon()
            raise ValueError(f"--out {self.out}: cannot write there ({err.strerror or err}); choose a writable "
                             f"directory") from None
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            fh.close()
            raise ValueError(f"--out {self.out}: another l2b run (pid {holder}) is training in it; wait for it to "
                             f"finish, or choose another --out") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        self.fh = fh
        return self

    def release(self) -> None:
        if self.fh is not None:
            import fcntl

            # unlocked explicitly: a DataLoader worker forked while the run trained shares the locked file,
            # and closing only this process's copy would leave the lock held while that worker lives
            fcntl.flock(self.fh, fcntl.LOCK_UN)
            self.fh.close()
            self.fh = None

    def abandon(self) -> None:
        """A run that failed before writing anything: release the lock, and remove the lock file
        and the directories this lock created (deepest first, only while empty)."""
        if self.fh is not None:
            (self.out / LOCK_NAME).unlink(missing_ok=True)
        self.release()
        for path in reversed(self.created):
            try:
                path.rmdir()
            except OSError:
                break


def out_of_space(err: BaseException) -> bool:
    """Whether a failed write ran out of space: ENOSPC/EFBIG/EDQUOT, or torch's zip writer's own
    words for a short write."""
    if isinstance(err, OSError) and err.errno in SPACE_ERRNOS:
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and ("unexpected pos" in text or "failed writing" in text
                                              or "File too large" in text or "No space left" in text)


def _mb(n: float) -> str:
    return f"{n / 2 ** 20:.1f} MB"


def atomic_write(path: Path, write: Callable[[Path], Any], needed: int | None = None) -> None:
    """``write(tmp)`` then rename over ``path``: a reader never sees half a file, and a write
    that fails leaves the previous ``path`` as it was and no temporary file. Running out of space
    is a one-line ``OSError`` naming the directory and about how much it needed."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:
        tmp.unlink(missing_ok=True)
        if not out_of_space(err):
            raise
        need = needed or (path.stat().st_size if path.is_file() else None)
        try:
            free = shutil.disk_usage(path.parent).free
        except OSError:
            free = None
        raise OSError(errno.ENOSPC, f"{path.parent}: no space left to write {path.name}"
                      + (f" (needs about {_mb(need)}" if need else " (")
                      + (f"{', ' if need else ''}{_mb(free)} free)" if free is not None else ")")
                      + "; free some space or choose another --out (the last good version of the file is kept)"
                      ) from None


def state_bytes(obj: Any) -> int:
    """The bytes of the tensors in a (nested) state: about what ``torch.save`` writes."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(state_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(state_bytes(v) for v in obj)
    return 0
