"""Atomic output files (jaxfcn.files) and figures (jaxfcn.plots.save): whole or absent, with the usual mode."""
import os
import stat

import pytest

from jaxfcn import plots
from jaxfcn.files import write_bytes_atomic, write_json_atomic, write_text_atomic


@pytest.fixture
def umask():
    """Set the process umask for one test and put the old one back."""
    saved = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(saved)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_an_atomic_file_gets_the_mode_a_plain_open_would_give(tmp_path, umask, mask, mode):
    umask(mask)
    write_text_atomic(str(tmp_path / "summary.json"), "{}\n")
    with open(tmp_path / "plain.json", "w") as f:
        f.write("{}\n")
    assert stat.S_IMODE(os.stat(tmp_path / "summary.json").st_mode) == mode
    assert stat.S_IMODE(os.stat(tmp_path / "plain.json").st_mode) == mode


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "report.md"
    write_text_atomic(str(path), "old ³\n")

    def refuse(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError, match="disk full"):
        write_bytes_atomic(str(path), b"new")
    assert path.read_text(encoding="utf-8") == "old ³\n"
    assert os.listdir(tmp_path) == ["report.md"]


def test_a_figure_is_a_whole_png_with_the_usual_mode(tmp_path, umask):
    umask(0o022)
    plt = plots.pyplot()
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    path = plots.save(fig, str(tmp_path / "figures" / "curve.png"))
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert not plt.fignum_exists(fig.number)  # closed


def test_a_figure_that_fails_to_render_leaves_no_file(tmp_path):
    from matplotlib.artist import Artist

    class Broken(Artist):
        def draw(self, renderer):
            raise RuntimeError("cannot draw")

    fig, ax = plots.pyplot().subplots()
    ax.add_artist(Broken())
    with pytest.raises(RuntimeError, match="cannot draw"):
        plots.save(fig, str(tmp_path / "broken.png"))
    assert os.listdir(tmp_path) == []


def test_json_is_indented_sorted_and_converts_what_json_cannot_hold(tmp_path):
    import json

    import numpy as np

    write_json_atomic(str(tmp_path / "a.json"), {"b": (1, 2), "a": 1})
    write_json_atomic(str(tmp_path / "b.json"), {"b": np.float32(0.5), "a": 1}, default=float, sort_keys=False)
    assert (tmp_path / "a.json").read_text() == json.dumps({"a": 1, "b": [1, 2]}, indent=2) + "\n"
    assert (tmp_path / "b.json").read_text() == json.dumps({"b": 0.5, "a": 1}, indent=2) + "\n"
