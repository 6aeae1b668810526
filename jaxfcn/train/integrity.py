"""SHA-256 manifests of saved steps: what orbax wrote is what a run, evaluate or analysis reads back.

orbax commits a step atomically (a temporary directory renamed into place) but never checks the bytes it
later reads back. A flipped bit in a data file then restores as wrong parameters with no error, and a
damaged metadata file surfaces as a ``UnicodeDecodeError`` from deep inside orbax. So every step
directory (``WORKDIR/checkpoints/<step>/`` and ``WORKDIR/snapshots/<step>/``) gets
:data:`MANIFEST_FILE`, with the size and SHA-256 of every file in it. :func:`write_manifest` writes it
atomically right after orbax has committed the step, and :func:`verify` checks it before every read
(:mod:`jaxfcn.train.checkpoint`).

Policy:

- A missing, truncated, unreadable or changed file raises :class:`DamagedStep`, a one-line
  :class:`~jaxfcn.errors.UserError` that names the step and the file.
- Files not listed in the manifest are ignored, since orbax reads only the files it wrote.
- A step without a manifest loads unverified, with one note per process on stderr. Such a step was
  written before jaxfcn wrote manifests, or by a process killed between orbax's commit and the manifest;
  orbax's atomic commit still means it is complete. :func:`unreadable_file` helps name the file when
  orbax then fails on it.

Example::

    write_manifest("runs/tissue/snapshots/60")      # after the orbax save has returned
    verify("runs/tissue/snapshots/60", "snapshot step 60 of runs/tissue")   # True, or DamagedStep
"""
from __future__ import annotations

import hashlib
import json
import os
import sys

from jaxfcn.errors import UserError

MANIFEST_FILE = "jaxfcn_sha256.json"
FORMAT = 1
_noted_unverified = False  # the stderr note about steps without a manifest is printed once per process


class DamagedStep(UserError):
    """A saved step whose files do not match its manifest (``path``: the first bad file)."""

    def __init__(self, message: str, path: str):
        super().__init__(message)
        self.path = path


def sha256_file(path: str, chunk: int = 1 << 22) -> str:
    digest, buffer = hashlib.sha256(), bytearray(chunk)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            digest.update(view[:n])
    return digest.hexdigest()


def _files(directory: str) -> list[str]:
    """The step's files relative to ``directory`` (POSIX separators), without the manifest and its temporaries."""
    out = []
    for root, _, names in os.walk(directory):
        for name in names:
            if name == MANIFEST_FILE or name.startswith("." + MANIFEST_FILE):
                continue
            out.append(os.path.relpath(os.path.join(root, name), directory).replace(os.sep, "/"))
    return sorted(out)


def write_manifest(directory: str) -> dict:
    """Write ``directory/MANIFEST_FILE`` (size and SHA-256 of every file) atomically; returns it."""
    from jaxfcn.train.workdir import write_json_atomic

    files = {}
    for rel in _files(directory):
        path = os.path.join(directory, rel)
        files[rel] = {"bytes": os.path.getsize(path), "sha256": sha256_file(path)}
    manifest = {"format": FORMAT, "algorithm": "sha256", "files": files}
    write_json_atomic(os.path.join(directory, MANIFEST_FILE), manifest)
    return manifest


def _read_manifest(directory: str, what: str) -> dict | None:
    path = os.path.join(directory, MANIFEST_FILE)
    if not os.path.exists(path):
        return None
    try:
        with open(path, "rb") as f:
            manifest = json.loads(f.read().decode("utf-8"))
        files = manifest["files"]
        if not isinstance(files, dict) or not files:
            raise ValueError("no files listed")
        return manifest
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DamagedStep(f"{what} is damaged: its checksum manifest {path} is unreadable "
                          f"({type(e).__name__}: {e})", path) from None


def verify(directory: str, what: str) -> bool:
    """Check every file of the step in ``directory`` against its manifest; ``what`` names the step in
    messages (e.g. "snapshot step 60 of runs/tissue").

    Returns True when every file matches and False when the step has no manifest (see the module's
    policy). Raises :class:`DamagedStep` at the first file that is missing, unreadable, of another size,
    or of another SHA-256. Sizes are checked first, since that is cheap and catches truncation.
    """
    manifest = _read_manifest(directory, what)
    if manifest is None:
        _note_unverified(directory)
        return False
    files = manifest["files"]
    for rel, entry in files.items():
        path = os.path.join(directory, rel)
        try:
            size = os.path.getsize(path)
        except FileNotFoundError:
            raise DamagedStep(f"{what} is damaged: {path} is missing", path) from None
        except OSError as e:
            raise DamagedStep(f"{what} is damaged: {path} is unreadable ({e.strerror or e})", path) from None
        if size != entry["bytes"]:
            raise DamagedStep(f"{what} is damaged: {path} has {size} bytes, {entry['bytes']} were saved", path)
    for rel, entry in files.items():
        path = os.path.join(directory, rel)
        try:
            digest = sha256_file(path)
        except OSError as e:
            raise DamagedStep(f"{what} is damaged: {path} is unreadable ({e.strerror or e})", path) from None
        if digest != entry["sha256"]:
            raise DamagedStep(f"{what} is damaged: {path} does not match its SHA-256 checksum", path)
    return True


def _note_unverified(directory: str) -> None:
    global _noted_unverified
    if not _noted_unverified:
        _noted_unverified = True
        print(f"jaxfcn: note: {directory} has no checksum manifest (saved before jaxfcn wrote them); "
              "steps like it are loaded without verification", file=sys.stderr)


def unreadable_file(directory: str) -> str | None:
    """The first JSON metadata file of an orbax step that does not decode (None if all do): names the
    file when orbax fails on a step that has no manifest. Array data (``d/`` folders, ``*.ocdbt``) and
    ``commit_success.txt`` are not JSON and are skipped."""
    for rel in _files(directory):
        parts = rel.split("/")
        if "d" in parts[:-1] or rel.endswith((".ocdbt", ".txt")):
            continue
        path = os.path.join(directory, rel)
        try:
            with open(path, "rb") as f:
                json.loads(f.read().decode("utf-8"))
        except (OSError, ValueError):
            return path
    return None
