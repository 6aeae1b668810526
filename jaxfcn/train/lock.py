"""One writer per directory: an exclusive lock on a run's workdir (or a study's out dir) while it writes.

Without it, two ``jaxfcn train`` processes given the same ``--workdir`` both ran to the end. They wrote the
same checkpoints and the same ``metrics.jsonl`` at the same time. Now the second is refused with one line
that names the holder::

    jaxfcn: error: --workdir runs/tissue: in use by another jaxfcn process (PID 4242 on host node3, since
    2025-01-01 10:00:00 UTC); wait for it to end or use another directory

How: ``fcntl.flock(LOCK_EX | LOCK_NB)`` on ``DIR/.jaxfcn.lock``, which holds the holder's PID, host,
start time and command line (JSON). The kernel releases a flock when its process dies, ``kill -9``
included. So a lock left by a killed run is stale by construction: the next run takes it over (and says
so on stderr), and a rerun resumes. On NFS, Linux maps flock to a POSIX lock that the server arbitrates
between hosts. A file system without locks gets a note and an unlocked run, not a refusal.

A clean release deletes the lock file while still holding the lock. Someone who opened the old file
checks after locking that the path still names it, and tries again if not, so an unlinked file never
lets two holders in. The lock file is the only file a lock adds, and
:func:`jaxfcn.train.workdir.entries` lists a directory without it (a fresh workdir holding only its lock
is still empty). A lock is per open file: a second lock on the same directory is refused even in the
same process.

Example::

    with hold("runs/tissue", flag="--workdir"):
        ...  # write checkpoints, metrics, summaries
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import functools
import inspect
import json
import os
import socket
import sys
import time

from jaxfcn.errors import UserError

LOCK_FILE = ".jaxfcn.lock"
# flock errors of a file system without locks (some FUSE and old NFS mounts): a run goes on unlocked, with a note.
UNSUPPORTED = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)


def _holder(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return json.loads(os.read(fd, 1 << 16).decode("utf-8") or "{}")
    except (OSError, ValueError):
        return {}


def _describe(holder: dict) -> str:
    since = f", since {holder['started']}" if holder.get("started") else ""
    return f"PID {holder.get('pid', '?')} on host {holder.get('host', '?')}{since}"


class DirectoryLock:
    """The held lock of one directory (see the module docstring); :meth:`release` or use as a context."""

    def __init__(self, directory: str, flag: str = "--workdir"):
        self.directory, self.flag = directory, flag
        self.path = os.path.join(directory, LOCK_FILE)
        self._created_dir = not os.path.isdir(directory)
        if os.path.exists(directory) and not os.path.isdir(directory):
            raise UserError(f"{flag} {directory}: exists and is not a directory")
        os.makedirs(directory, exist_ok=True)
        self.fd, previous = self._acquire()
        holder = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
                  "command": sys.argv}
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, (json.dumps(holder) + "\n").encode("utf-8"), 0)
        os.fsync(self.fd)
        if previous.get("pid") is not None:
            print(f"jaxfcn: {flag} {directory}: taking over the lock left by {_describe(previous)}, which no "
                  "longer holds it", file=sys.stderr)

    def _acquire(self) -> tuple[int, dict]:
        """(locked fd, what the file said before: the previous holder of a stale lock, or {})."""
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except FileNotFoundError:  # a releasing holder removed the directory it had created
                os.makedirs(self.directory, exist_ok=True)
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno in UNSUPPORTED:
                    print(f"jaxfcn: note: {self.flag} {self.directory}: the file system cannot lock {self.path} "
                          f"({e.strerror}); running without a lock", file=sys.stderr)
                    return fd, {}
                holder = _holder(fd)
                for _ in range(20):  # the holder writes its PID right after locking
                    if holder.get("pid") is not None:
                        break
                    time.sleep(0.05)
                    holder = _holder(fd)
                os.close(fd)
                if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise UserError(f"{self.flag} {self.directory}: cannot lock {self.path} ({e.strerror})") from None
                raise UserError(f"{self.flag} {self.directory}: in use by another jaxfcn process "
                                f"({_describe(holder)}); wait for it to end or use another directory") from None
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return fd, _holder(fd)
            os.close(fd)  # the holder released (and deleted) the file between our open and our lock

    def release(self) -> None:
        """Delete the lock file (and the directory, if the lock created it and nothing else is in it), then unlock."""
        if self.fd is None:
            return
        try:
            os.unlink(self.path)
            if self._created_dir and not os.listdir(self.directory):
                os.rmdir(self.directory)
        except OSError:
            pass
        finally:
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def hold(directory: str, flag: str = "--workdir") -> DirectoryLock:
    """Lock ``directory`` (created if missing) for this process; UserError naming the holder if another
    process has it. ``flag`` names the directory in messages (e.g. ``--workdir``, ``--out``)."""
    return DirectoryLock(directory, flag)


def holding(argument: str, flag: str):
    """Decorator: the function runs holding the lock of the directory passed as its ``argument``."""
    def decorate(function):
        signature = inspect.signature(function)

        @functools.wraps(function)
        def locked(*args, **kwargs):
            directory = signature.bind(*args, **kwargs).arguments[argument]
            with hold(directory, flag):
                return function(*args, **kwargs)
        return locked
    return decorate


def maybe_hold(directory: str, primary: bool, flag: str = "--workdir"):
    """:func:`hold` in the process that writes the files (process 0 of a multi-host run), else nothing."""
    return hold(directory, flag) if primary else contextlib.nullcontext()
