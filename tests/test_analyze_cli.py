"""`jaxfcn analyze cka|filters|evolution` on real workdirs trained on the built-in tissue task."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from jaxfcn.cli import main
from train_helpers import write_tiny_config

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def is_png(path) -> bool:
    with open(path, "rb") as f:
        return f.read(8) == PNG_MAGIC


@pytest.mark.parametrize("command", ["cka", "filters", "evolution"])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["analyze", command, "--help"])
    assert exit_info.value.code == 0
    assert "--out" in capsys.readouterr().out


def test_analyze_commands_on_trained_runs(tmp_path, capsys):
    """One test (not a module fixture): under pytest-xdist every worker would train its own runs."""
    config = write_tiny_config(tmp_path / "tiny.py")  # 6 steps, snapshots at 0, 1, 3, 6
    runs = [str(tmp_path / name) for name in ("seed0", "seed1")]
    for seed, workdir in enumerate(runs):
        assert main(["train", "--config", config, "--workdir", workdir, "--no-progress",
                     "--set", f"train.seed={seed}"]) == 0
    capsys.readouterr()
    check_cka(runs, tmp_path / "cka")
    check_filters(runs, tmp_path / "filters")
    check_evolution(runs[0], tmp_path / "evolution")
    check_refusals(runs, tmp_path, config, capsys)


def check_cka(runs, out):
    from jaxfcn.analysis.cka import cka
    from jaxfcn.analysis.features import extract_features, probe_images
    from jaxfcn.data import open_dataset
    from jaxfcn.models import build_model
    from jaxfcn.train.checkpoint import load_variables
    from jaxfcn.train.workdir import load_run_config

    assert main(["analyze", "cka", "--runs", *runs, "--probes", "12", "--out", str(out)]) == 0
    meta = json.loads((out / "cka.json").read_text())
    assert meta["labels"] == ["seed0", "seed1"] and meta["layers"] == ["enc_0", "bottleneck", "head_input"]
    assert meta["steps"] == [6, 6] and meta["probes"] == 12 and meta["kernel"] == "linear"
    data = np.load(out / "cka.npz")
    m = data["cka"]
    assert m.shape == (2, 3, 2, 3) and list(data["layers"]) == meta["layers"]
    np.testing.assert_allclose(m, m.transpose(2, 3, 0, 1), atol=1e-6)
    np.testing.assert_allclose([m[r, k, r, k] for r in range(2) for k in range(3)], 1.0, atol=1e-5)
    assert np.all(m > 0) and np.all(m <= 1 + 1e-5)
    # the same number from the library, step by step
    c = load_run_config(runs[0])
    images = probe_images(open_dataset(c.data, depth=c.model.depth, progress=False), 12, 0)
    feats = [extract_features(build_model(c.model), load_variables(w)[0], images, ["bottleneck"],
                              max_features=16384)["bottleneck"] for w in runs]
    assert m[0, 1, 1, 1] == pytest.approx(float(cka(*feats, debiased=True)), abs=1e-5)  # the CLI default
    pngs = meta["files"]["layer_x_layer"] + meta["files"]["run_x_run"]
    assert len(pngs) == 3 + 3 and all(is_png(out / p) for p in pngs)


def check_filters(runs, out):
    from jaxfcn.train.checkpoint import load_params

    assert main(["analyze", "filters", "--runs", *runs, "--out", str(out), "--null-draws", "60"]) == 0
    with open(out / "filters.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 2 * 8  # conv ×4 (encoder), up_0, conv ×2 (decoder), head
    assert {row["verdict"] for row in table} <= {"random-like", "non-random"}
    assert all(float(row["ks_p"]) >= 0 and row["tests_in_family"] == "23" for row in table)
    with open(out / "changes.csv") as f:
        changes = list(csv.DictReader(f))
    assert len(changes) == 2 * 4 * 8
    assert all(float(r["relative_change"]) == 0 for r in changes if r["step"] == "0")
    row = next(r for r in changes if r["run"] == "seed1" and r["step"] == "6" and r["layer"] == "encoder/block_0/conv_0")
    w0 = load_params(runs[1], 0)["encoder"]["block_0"]["conv_0"]["kernel"]
    w6 = load_params(runs[1], 6)["encoder"]["block_0"]["conv_0"]["kernel"]
    assert float(row["relative_change"]) == pytest.approx(np.linalg.norm(w6 - w0) / np.linalg.norm(w0), rel=1e-5)
    summary = json.loads((out / "filters.json").read_text())["summary"]
    assert set(summary) == {"seed0", "seed1"} and summary["seed0"]["step"] == 6
    for name in ("change_seed0.png", "first_layer_seed0.png", "change_seed1.png"):
        assert is_png(out / name)


def check_evolution(run, out):
    assert main(["analyze", "evolution", "--run", run, "--probes", "12", "--layers", "enc_0", "head_input",
                 "--out", str(out)]) == 0
    ev = json.loads((out / "evolution.json").read_text())
    assert ev["steps"] == [0, 1, 3, 6] and ev["layers"] == ["enc_0", "head_input"]
    for layer in ev["layers"]:
        assert ev["vs_init"][layer][0] == pytest.approx(1.0, abs=1e-5)
        assert ev["vs_final"][layer][-1] == pytest.approx(1.0, abs=1e-5)
        assert ev["vs_init"][layer][-1] == pytest.approx(ev["vs_final"][layer][0], abs=1e-6)
    assert is_png(out / "evolution.png")


def check_refusals(runs, tmp_path, config, capsys):
    from jaxfcn.config import load_config
    from jaxfcn.train.workdir import create_workdir, load_dataset_info

    wide = load_config(config, ["model.base_width=8"])
    wide.model.num_classes, wide.model.in_channels = 4, 1
    create_workdir(str(tmp_path / "wide"), wide, load_dataset_info(runs[0]))  # untrained, other architecture
    cases = [
        (["cka", "--runs", runs[0], str(tmp_path / "wide")], "different architecture than", "base_width 4 vs 8"),
        (["cka", "--runs", *runs, "--layers", "enc_0", "dec_7"], "--layers: unknown layer 'dec_7'", "enc_0, bottleneck"),
        (["cka", "--runs", *runs, "--step", "4"], "no parameters saved at step 4", "snapshots: [0, 1, 3, 6]"),
        (["filters", "--runs", runs[0], "--step", "4"], "no snapshot at that step", "[0, 1, 3, 6]"),
        (["filters", "--runs", str(tmp_path / "wide")], "no parameter snapshots", ""),
        (["evolution", "--run", str(tmp_path / "nowhere")], "not a jaxfcn workdir", ""),
    ]
    for args, expected, detail in cases:
        out = tmp_path / "refused"
        assert main(["analyze", *args, "--out", str(out)]) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("jaxfcn: error: ") and expected in err[0] and detail in err[0], err
        assert not out.exists()
