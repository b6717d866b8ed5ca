"""A run owns its directory: an exclusive lock, and no silent replacing of a finished run.

The lock is `flock` on `DIR/run.lock` (`run.lock.<process index>` for the other processes of a
multi-process run), taken before anything else is written and released by the kernel when the
holder's file closes, so a `kill -9`-ed run leaves nothing stale behind: the file may stay, the
lock does not. The holder writes its PID into the file, for the message a second run gets.
"""

import contextlib
import fcntl
import os
from collections.abc import Iterator

import jax

LOCK = "run.lock"
RESULTS = "metrics.json"


class WorkdirError(ValueError):
    """The directory belongs to another run, or holds a finished run that would be replaced."""


def lock_name(process_index: int) -> str:
    return LOCK if process_index == 0 else f"{LOCK}.{process_index}"


@contextlib.contextmanager
def claim(workdir: str, process_index: int | None = None) -> Iterator[str]:
    """Holds the exclusive lock of `workdir` (created if missing) for the `with` block.

    Raises:
      WorkdirError: at once, when another process (or another open in this one) holds it;
        the message names the directory and the holder's PID.
    """
    index = jax.process_index() if process_index is None else process_index
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, lock_name(index))
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise WorkdirError(
                f"{os.path.abspath(workdir)} is in use by another run (PID {holder}); wait for "
                "it to end or choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock


def finished_run(workdir: str) -> str | None:
    """What a finished run left in `workdir` (its results file), or None."""
    path = os.path.join(workdir, RESULTS)
    return path if os.path.exists(path) else None
