"""``jaxfcn data fetch msd TASK``: download, verify and unpack a Medical Segmentation Decathlon task.

The ten MSD tasks are distributed as one tar archive each. We fetch them from the AWS open-data mirror
that MONAI's ``DecathlonDataset(download=True)`` uses (:data:`DEFAULT_MIRROR`) and verify the MD5 that
MONAI pins for each archive (:data:`TASKS`), so a user of both libraries gets byte-identical data.

Steps, each safe to interrupt:

1. Download ``<task>.tar`` into ``DIR/<task>.tar.part`` with a progress bar. A rerun continues a ``.part``
   file with an HTTP ``Range`` request where the server honours it (a server that answers 200 instead of
   206 is downloaded afresh); a half-downloaded file is never used.
2. Verify the MD5 of the whole file; on a mismatch the file is removed and the error names it, the
   expected and the computed checksum. The verified file becomes ``DIR/<task>.tar``.
3. Unpack into a hidden temporary folder inside ``DIR`` (macOS ``._*`` resource-fork members skipped,
   only plain files and folders, no path outside the folder), then move the task folder into place with
   one ``os.replace``. A damaged or truncated archive is a one-line error and leaves no partial folder.
4. Remove the archive (``keep_archive`` keeps it) and return the folder; the CLI then runs
   ``jaxfcn data check`` on it.

Mirrors: ``--mirror`` or ``$JAXFCN_MSD_MIRROR``, a base URL (``https://…``, ``file:///…``) or a local folder
holding ``<task>.tar``, or the URL of the archive itself (ending in ``.tar``). A mirror that serves a
re-packed archive needs its own checksum (``md5=``, ``--md5``).

Where: ``--to DIR``, else ``$JAXFCN_MSD_DIR``, else ``$JAXFCN_CACHE/msd`` (:func:`default_dir`); the task
lands in ``DIR/<task>`` (:func:`task_folder`), which is where ``configs/reproduce_msd.py`` looks.

Example::

    folder = fetch_msd("4", "/data")            # /data/Task04_Hippocampus, MD5-verified
"""
from __future__ import annotations

import http.client
import os
import re
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zlib
from pathlib import Path

from jaxfcn.data.fetch import cache_root, digest_of, file_lock
from jaxfcn.errors import UserError

# MD5 of each task's archive, as MONAI's DecathlonDataset pins them (monai/apps/datasets.py).
TASKS = {
    "Task01_BrainTumour": "240a19d752f0d9e9101544901065d872",
    "Task02_Heart": "06ee59366e1e5124267b774dbd654057",
    "Task03_Liver": "a90ec6c4aa7f6a3d087205e23d4e6397",
    "Task04_Hippocampus": "9d24dba78a72977dbd1d2e110310f31b",
    "Task05_Prostate": "35138f08b1efaef89d7424d2bcc928db",
    "Task06_Lung": "8afd997733c7fc0432f71255ba4e52dc",
    "Task07_Pancreas": "4f7080cfca169fa8066d17ce6eb061e4",
    "Task08_HepaticVessel": "641d79e80ec66453921d997fbf12a29c",
    "Task09_Spleen": "410d4a301da4e5b2f6f86ec3ddba524e",
    "Task10_Colon": "bad7a188931dc2f6acf72b08eb6202d0",
}
DEFAULT_MIRROR = "https://msd-for-monai.s3-us-west-2.amazonaws.com"
MIRROR_ENV = "JAXFCN_MSD_MIRROR"
DIR_ENV = "JAXFCN_MSD_DIR"
TIMEOUT_S = 60  # per socket operation, not for the whole download
CHUNK = 1 << 20
_TAR_END = b"\0" * 1024  # two zero blocks close every tar archive


def resolve_task(name: str) -> str:
    """The MSD name of ``name``: ``"4"``, ``"04"``, ``"Task04"``, ``"task04_hippocampus"``,
    ``"Hippocampus"`` all give ``"Task04_Hippocampus"``."""
    text = str(name).strip()
    number = re.fullmatch(r"(?i)(?:task)?0*(\d+)", text)
    for task in TASKS:
        task_number, short = task[4:6], task[7:]
        if (number and int(number.group(1)) == int(task_number)) or text.lower() in (task.lower(), short.lower()):
            return task
    raise UserError(f"msd task '{name}': unknown; choose a number 1-10 or one of {', '.join(TASKS)}")


def default_dir() -> Path:
    """``$JAXFCN_MSD_DIR``, else ``$JAXFCN_CACHE/msd`` (default ``~/.cache/jaxfcn/msd``)."""
    return Path(os.environ.get(DIR_ENV) or cache_root() / "msd")


def task_folder(task: str, root=None) -> str:
    """Where ``jaxfcn data fetch msd TASK [--to root]`` puts the task (it need not exist yet)."""
    return str((Path(root).expanduser() if root else default_dir()) / resolve_task(task))


def archive_url(task: str, mirror: str | None = None) -> str:
    """The archive's URL at ``mirror`` (default: ``$JAXFCN_MSD_MIRROR``, else :data:`DEFAULT_MIRROR`)."""
    base = (mirror or os.environ.get(MIRROR_ENV) or DEFAULT_MIRROR).strip()
    if "://" not in base:  # a local folder (or archive)
        base = Path(base).expanduser().resolve().as_uri()
    if base.endswith(".tar") or base.endswith(".tar.gz"):
        return base
    return f"{base.rstrip('/')}/{task}.tar"


def _open(url: str, start: int):
    """``(response, resumed?)`` for ``url`` from byte ``start``; ``(None, True)`` when the server says the
    range is past the end (a complete ``.part``: the checksum decides)."""
    headers = {"User-Agent": "jaxfcn"}
    if start:
        headers["Range"] = f"bytes={start}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)
    except urllib.error.HTTPError as e:
        if e.code == 416 and start:
            return None, True
        raise UserError(f"{url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", None) or e
        raise UserError(f"{url}: cannot download ({reason})") from None
    content_range = response.headers.get("Content-Range", "")
    resumed = bool(start) and getattr(response, "status", None) == 206 and content_range.startswith(
        f"bytes {start}-")
    return response, resumed


def download(url: str, part: Path, progress: bool = True) -> None:
    """Download ``url`` into ``part``, continuing what ``part`` already holds where the server allows it.

    An interrupted transfer keeps ``part`` and raises a one-line UserError that says to run again."""
    from tqdm import tqdm

    start = part.stat().st_size if part.exists() else 0
    response, resumed = _open(url, start)
    if response is None:
        return
    with response:
        if not resumed:
            start = 0
        length = response.headers.get("Content-Length")
        total = start + int(length) if length and length.isdigit() else None
        with open(part, "ab" if resumed else "wb") as out, tqdm(
                total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024, desc=part.name[:-5],
                disable=not progress, dynamic_ncols=True, leave=False) as bar:
            try:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
            except (OSError, http.client.HTTPException) as e:
                out.flush()
                raise UserError(f"{url}: download stopped at {out.tell()} of {total or '?'} bytes "
                                f"({type(e).__name__}); run the same command again to resume") from None
            have = out.tell()
    if total is not None and have < total:
        raise UserError(f"{url}: download stopped at {have} of {total} bytes; run the same command again to resume")


def verify(path: Path, expected_md5: str, source: str) -> None:
    """Raise (after removing ``path``) unless its MD5 is ``expected_md5``."""
    got = digest_of(path, "md5")
    if got != expected_md5.lower():
        path.unlink()
        raise UserError(f"{path}: MD5 {got} does not match the expected {expected_md5.lower()} (from {source}); "
                        "the file was removed")


def _members(tar: tarfile.TarFile):
    """The members to unpack: plain files and folders inside the archive, without macOS ``._*`` files."""
    for member in tar:
        parts = Path(member.name).parts
        if any(p.startswith("._") or p == "__MACOSX" for p in parts):
            continue
        if member.name.startswith(("/", "\\")) or ".." in parts or not (member.isfile() or member.isdir()):
            raise tarfile.TarError(f"member '{member.name}' is not a plain file or folder inside the archive")
        yield member


def _check_end(path: Path, tar: tarfile.TarFile) -> None:
    """An uncompressed tar cut at a member boundary reads as a shorter archive; its end blocks are missing."""
    with open(path, "rb") as f:
        if f.read(2) == b"\x1f\x8b":  # gzip: its own end-of-stream check has run
            return
        f.seek(tar.offset)
        if f.read(len(_TAR_END)) != _TAR_END:
            raise tarfile.TarError("the archive ends without its end-of-archive blocks (truncated)")


def unpack(archive: Path, to: Path, task: str) -> Path:
    """Unpack ``archive`` (holding ``<task>/dataset.json``, or ``dataset.json`` at its top) into
    ``to/<task>`` atomically: all of it or nothing."""
    destination = to / task
    tmp = Path(tempfile.mkdtemp(prefix=f".{task}.unpack-", dir=to))
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in _members(tar):
                tar.extract(member, tmp, set_attrs=False, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
            _check_end(archive, tar)
        root = next((r for r in (tmp / task, tmp) if (r / "dataset.json").is_file()), None)
        if root is None:
            raise UserError(f"{archive}: holds no {task}/dataset.json; not an MSD task archive")
        os.replace(root, destination)
    except (tarfile.TarError, EOFError, zlib.error) as e:
        archive.unlink()  # it cannot be used; a rerun downloads it again
        raise UserError(f"{archive}: damaged or truncated archive ({e}); nothing was unpacked and the "
                        "archive was removed") from None
    except OSError as e:  # the disk, not the archive: keep the verified file for a rerun
        raise UserError(f"{to}: cannot unpack {archive.name} ({e.strerror or e}); nothing was unpacked") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return destination


def fetch_msd(task: str, to=None, *, mirror: str | None = None, md5: str | None = None,
              keep_archive: bool = False, progress: bool = True) -> Path:
    """Fetch MSD ``task`` into ``to`` (default :func:`default_dir`); returns ``to/<task>``.

    ``md5`` replaces the pinned checksum (a mirror serving its own archive). A task folder that already
    holds ``dataset.json`` is returned as it is."""
    task = resolve_task(task)
    to = Path(to).expanduser() if to else default_dir()
    destination = to / task
    if (destination / "dataset.json").is_file():
        return destination
    if destination.exists():
        raise UserError(f"{destination}: exists without dataset.json; remove it or choose another --to")
    expected = (md5 or TASKS[task]).strip().lower()
    if not re.fullmatch(r"[0-9a-f]{32}", expected):
        raise UserError(f"--md5 {md5}: not an MD5 checksum (32 hexadecimal digits)")
    url = archive_url(task, mirror)
    to.mkdir(parents=True, exist_ok=True)
    with file_lock(cache_root() / "locks" / f"msd-{task}.lock"):  # one fetch of a task at a time
        for stale in to.glob(f".{task}.unpack-*"):  # left by a killed unpack
            shutil.rmtree(stale, ignore_errors=True)
        if (destination / "dataset.json").is_file():  # fetched by another process meanwhile
            return destination
        archive, part = to / f"{task}.tar", to / f"{task}.tar.part"
        if archive.exists():
            try:
                verify(archive, expected, str(archive))
            except UserError:
                pass  # removed: download it again
        if not archive.exists():
            download(url, part, progress)
            verify(part, expected, url)
            os.replace(part, archive)
        unpack(archive, to, task)
        if not keep_archive:
            archive.unlink()
    return destination
