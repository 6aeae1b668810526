"""Files that appear whole or not at all: every report, summary, manifest and figure jaxfcn writes.

:func:`write_bytes_atomic` writes to a temporary file in the target's directory, flushes it to disk and
renames it over the target (``os.replace``, atomic on POSIX), so a reader, or a run interrupted mid-write,
never sees half a file. The file gets the mode a plain ``open(path, "w")`` would give it (0666 less the
umask): ``tempfile.mkstemp``'s 0600 would hide a run's results from the rest of a lab's group.

Example::

    from jaxfcn.files import write_json_atomic
    write_json_atomic("runs/a/summary.json", summary)
"""
from __future__ import annotations

import json
import os
import secrets


def write_bytes_atomic(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see the module docstring); the directory must exist."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text_atomic(path: str, text: str) -> None:
    """:func:`write_bytes_atomic` of ``text`` in UTF-8."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str, obj, default=list, sort_keys: bool = True) -> None:
    """:func:`write_text_atomic` of ``obj`` as indented JSON and a final newline; ``default`` converts what
    JSON cannot hold (lists for tuples and arrays; ``float`` for NumPy scalars)."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=sort_keys, default=default) + "\n")
