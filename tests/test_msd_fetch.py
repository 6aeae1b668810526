"""``jaxfcn data fetch msd`` against local mirrors: a tiny MSD-shaped archive made here (real NIfTI
from the built-in volumes), served from a folder, a ``file://`` URL, and an HTTP server on 127.0.0.1 that
honours ``Range`` and can cut a response short. No test touches the internet.

Checked: the task lands in DIR/<task> and passes ``data check``; the pinned MD5 refuses an archive that
does not match (one line naming the file, expected and got; nothing left); a cut download resumes with
a Range request; a server that ignores Range is downloaded afresh; a truncated archive (cut inside a
member or at a member boundary) is one line and leaves no folder.
"""
from __future__ import annotations

import hashlib
import http.server
import io
import re
import sys
import tarfile
import threading
from pathlib import Path

import pytest

from jaxfcn.cli import main
from jaxfcn.data.msd_fetch import TASKS, archive_url, resolve_task

sys.path.insert(0, str(Path(__file__).parent))
import data_fixtures  # noqa: E402

TASK = "Task04_Hippocampus"


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> bytes:
    """``Task04_Hippocampus.tar``: the MSD fixture folder under ``Task04_Hippocampus/`` plus a macOS
    ``._`` resource-fork member, as the real MSD archives carry."""
    root = tmp_path_factory.mktemp("msd_src")
    with data_fixtures.cache_env(data_fixtures.session_cache(tmp_path_factory)):
        folder = data_fixtures.write_msd(root / TASK, channels=1)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(folder, arcname=TASK)
        junk = tarfile.TarInfo(f"{TASK}/imagesTr/._case_000.nii.gz")
        junk.size = 4
        tar.addfile(junk, io.BytesIO(b"\0\5\26\7"))
    return buffer.getvalue()


class MirrorServer(http.server.ThreadingHTTPServer):
    """Serves ``files`` (name → bytes); ``cuts``: byte counts after which the next responses stop
    (one per request); ``ranges``: whether ``Range: bytes=N-`` is honoured; ``log``: Range headers seen."""

    def __init__(self, files: dict, ranges: bool = True):
        super().__init__(("127.0.0.1", 0), MirrorHandler)
        self.files, self.ranges, self.cuts, self.log = files, ranges, [], []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class MirrorHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        server = self.server
        data = server.files.get(self.path.lstrip("/"))
        if data is None:
            self.send_error(404)
            return
        requested = self.headers.get("Range")
        server.log.append(requested)
        start = int(re.fullmatch(r"bytes=(\d+)-", requested).group(1)) if requested and server.ranges else 0
        if start >= len(data) > 0 and requested:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.end_headers()
            return
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        cut = server.cuts.pop(0) if server.cuts else None
        self.wfile.write(data[start:start + cut] if cut is not None else data[start:])

    def log_message(self, *args):
        pass


@pytest.fixture
def serve():
    servers = []

    def start(files: dict, ranges: bool = True) -> MirrorServer:
        server = MirrorServer(files, ranges)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _fetch(capsys, to: Path, *args) -> tuple[int, str, str]:
    code = main(["data", "fetch", "msd", *args, "--to", str(to), "--quiet"])
    out, err = capsys.readouterr()
    return code, out, err


def _left(to: Path) -> list[str]:
    return sorted(p.name for p in to.iterdir()) if to.exists() else []


def test_task_names():
    assert {resolve_task(n) for n in ("4", "04", "Task04", "task04_hippocampus", TASK, "hippocampus")} == {TASK}
    assert resolve_task("10") == "Task10_Colon" and len(TASKS) == 10
    assert archive_url(TASK) == f"https://msd-for-monai.s3-us-west-2.amazonaws.com/{TASK}.tar"


def test_fetch_from_a_folder_then_from_http(archive, tmp_path, capsys, serve):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / f"{TASK}.tar").write_bytes(archive)
    code, out, err = _fetch(capsys, tmp_path / "a", "4", "--mirror", str(mirror), "--md5", _md5(archive))
    assert code == 0, err
    folder = tmp_path / "a" / TASK
    assert f"fetched, MD5 verified, unpacked into {folder}" in out and f"{folder}: OK: MSD dataset" in out
    assert _left(tmp_path / "a") == [TASK]  # no archive, no .part, no temporary folder
    assert not list(folder.rglob("._*"))  # the resource-fork member was skipped
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        member = tar.extractfile(f"{TASK}/labelsTr/case_000.nii.gz").read()
    assert (folder / "labelsTr" / "case_000.nii.gz").read_bytes() == member

    server = serve({f"{TASK}.tar": archive})
    code, out, err = _fetch(capsys, tmp_path / "b", TASK, "--mirror", server.url, "--md5", _md5(archive),
                            "--keep-archive")
    assert code == 0, err
    assert _left(tmp_path / "b") == [TASK, f"{TASK}.tar"] and server.log == [None]
    code, out, err = _fetch(capsys, tmp_path / "b", "Task04", "--mirror", server.url)  # already there
    assert code == 0 and f"already in {tmp_path / 'b' / TASK}" in out and server.log == [None]


def test_mirror_from_the_environment(archive, tmp_path, capsys, monkeypatch):
    (tmp_path / f"{TASK}.tar").write_bytes(archive)
    monkeypatch.setenv("JAXFCN_MSD_MIRROR", (tmp_path / f"{TASK}.tar").as_uri())
    code, out, err = _fetch(capsys, tmp_path / "to", "hippocampus", "--md5", _md5(archive))
    assert code == 0, err
    assert (tmp_path / "to" / TASK / "dataset.json").is_file()


def test_wrong_checksum_is_refused_and_removed(archive, tmp_path, capsys, serve):
    server = serve({f"{TASK}.tar": archive})
    to = tmp_path / "to"
    code, out, err = _fetch(capsys, to, "4", "--mirror", server.url)  # the pinned MD5 of the real archive
    assert code == 2
    (line,) = err.strip().splitlines()
    assert line == (f"jaxfcn: error: {to / (TASK + '.tar.part')}: MD5 {_md5(archive)} does not match the "
                    f"expected {TASKS[TASK]} (from {server.url}/{TASK}.tar); the file was removed")
    assert _left(to) == []


def test_a_cut_download_resumes_with_a_range_request(archive, tmp_path, capsys, serve):
    server = serve({f"{TASK}.tar": archive})
    server.cuts = [len(archive) // 3]
    to = tmp_path / "to"
    code, out, err = _fetch(capsys, to, "4", "--mirror", server.url, "--md5", _md5(archive))
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"download stopped at {len(archive) // 3} of {len(archive)} bytes" in err and "again to resume" in err
    assert _left(to) == [f"{TASK}.tar.part"] and (to / f"{TASK}.tar.part").stat().st_size == len(archive) // 3
    code, out, err = _fetch(capsys, to, "4", "--mirror", server.url, "--md5", _md5(archive))
    assert code == 0, err
    assert server.log == [None, f"bytes={len(archive) // 3}-"]  # the second request asked for the rest only
    assert _left(to) == [TASK] and "OK: MSD dataset" in out


def test_a_server_without_range_support_is_downloaded_afresh(archive, tmp_path, capsys, serve):
    server = serve({f"{TASK}.tar": archive}, ranges=False)
    server.cuts = [1000]
    to = tmp_path / "to"
    assert _fetch(capsys, to, "4", "--mirror", server.url, "--md5", _md5(archive))[0] == 2
    code, out, err = _fetch(capsys, to, "4", "--mirror", server.url, "--md5", _md5(archive))
    assert code == 0, err
    assert _left(to) == [TASK] and server.log == [None, "bytes=1000-"]


@pytest.mark.parametrize("where", ["inside a member", "at a member boundary"])
def test_a_truncated_archive_leaves_no_folder(archive, tmp_path, capsys, where):
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        members = [m for m in tar if m.isfile()]
        end = tar.offset
    last = members[-2]  # the last NIfTI file (the resource-fork member comes after it)
    cut = last.offset_data + last.size // 2 if where == "inside a member" else end
    truncated = archive[:cut]
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / f"{TASK}.tar").write_bytes(truncated)
    to = tmp_path / "to"
    code, out, err = _fetch(capsys, to, "4", "--mirror", str(mirror), "--md5", _md5(truncated))
    assert code == 2
    (line,) = err.strip().splitlines()
    assert line.startswith(f"jaxfcn: error: {to / (TASK + '.tar')}: damaged or truncated archive (")
    assert line.endswith("nothing was unpacked and the archive was removed")
    assert _left(to) == []  # no task folder, no temporary folder, no archive
