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
- The manifest checks itself. It carries :data:`SELF_CHECKSUM`, the SHA-256 of its own content in a
  canonical form (:func:`content_sha256`), and every entry must be well formed (a relative path, a byte
  count, 64 lowercase hex digits). Damage can leave a manifest valid JSON (two inverted ASCII bytes can
  form one UTF-8 character inside a hash or a file name); without the self-check such a manifest would
  pass, or blame a data file that is intact. A damaged manifest is refused as such, naming it.
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
import re
import sys

from jaxfcn.errors import UserError

MANIFEST_FILE = "jaxfcn_sha256.json"
# 2: with SELF_CHECKSUM. 1 (written before the self-check, read only): checked for form, not for content.
FORMAT = 2
SELF_CHECKSUM = "manifest_sha256"
_HEX64 = re.compile(r"[0-9a-f]{64}")
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
    from jaxfcn.files import write_json_atomic

    files = {}
    for rel in _files(directory):
        path = os.path.join(directory, rel)
        files[rel] = {"bytes": os.path.getsize(path), "sha256": sha256_file(path)}
    manifest = {"format": FORMAT, "algorithm": "sha256", "files": files}
    manifest[SELF_CHECKSUM] = content_sha256(manifest)
    write_json_atomic(os.path.join(directory, MANIFEST_FILE), manifest)
    return manifest


def content_sha256(manifest: dict) -> str:
    """SHA-256 of a manifest's content without :data:`SELF_CHECKSUM`: its keys sorted, no whitespace,
    ASCII only (``json.dumps(..., sort_keys=True, separators=(",", ":"))``), so any JSON layout of the same
    content has the same checksum."""
    body = {key: value for key, value in manifest.items() if key != SELF_CHECKSUM}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def _check_form(manifest) -> None:
    """ValueError naming the first part of a parsed manifest that is not what :func:`write_manifest` writes."""
    if not isinstance(manifest, dict):
        raise ValueError(f"a {type(manifest).__name__}, not an object")
    version = manifest.get("format")
    if type(version) is not int or version not in (1, FORMAT):
        raise ValueError(f"unknown format {version!r}")
    if manifest.get("algorithm") != "sha256":
        raise ValueError(f"unknown algorithm {manifest.get('algorithm')!r}")
    if version >= 2 or SELF_CHECKSUM in manifest:
        claimed = manifest.get(SELF_CHECKSUM)
        if not isinstance(claimed, str) or claimed != content_sha256(manifest):
            raise ValueError("its content does not match its own checksum")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise ValueError("no files listed")
    for rel, entry in files.items():
        parts = rel.split("/")
        if not rel or rel.startswith("/") or any(part in ("", ".", "..") for part in parts):
            raise ValueError(f"file name {rel!r} is not a path inside the step")
        if (not isinstance(entry, dict) or type(entry.get("bytes")) is not int or entry["bytes"] < 0
                or not isinstance(entry.get("sha256"), str) or not _HEX64.fullmatch(entry["sha256"])):
            raise ValueError(f"entry of {rel!r} is malformed")


def _read_manifest(directory: str, what: str) -> dict | None:
    """The step's parsed manifest (None if it has none); DamagedStep naming the manifest if it is damaged."""
    path = os.path.join(directory, MANIFEST_FILE)
    if not os.path.exists(path):
        return None
    try:
        with open(path, "rb") as f:
            manifest = json.loads(f.read().decode("utf-8"))
        _check_form(manifest)
        return manifest
    except (OSError, ValueError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        reason = str(e) if type(e) is ValueError else f"{type(e).__name__}: {e}"
        raise DamagedStep(f"{what} is damaged: its checksum manifest {path} cannot be trusted ({reason})",
                          path) from None


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
