"""``jaxfcn reproduce`` end to end on MSD-format folders written from the real built-in volumes.

One tiny grid (source: an MSD folder; target: an nnU-Net folder; 2 sizes × 4 regimes × 2 seeds, each
condition one 2-seed program) run through the CLI, then checked: the report and every figure exist, the
claims table is the one in ``results.json``, every run's Dice in ``results.json`` is its own summary's,
transfer seed n starts from source seed n, and re-running trains nothing.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxfcn.cli import main
from jaxfcn.train.checkpoint import load_params, snapshot_steps

sys.path.insert(0, str(Path(__file__).parent))
import data_fixtures  # noqa: E402

CONFIG = '''
from jaxfcn.config import base_config


def get_config():
    c = base_config()
    c.model.depth, c.model.base_width, c.model.norm_groups = 2, 4, 2
    c.data.spacing, c.data.slice_shape, c.data.num_folds = 6.0, (32, 32), 2
    c.train.batch_size, c.train.learning_rate = 4, 3e-3
    c.train.eval_every, c.train.log_every, c.train.checkpoint_every, c.train.val_batches = 2, 2, 100, 1
    c.train.snapshot_steps = "log:2"
    c.study.train_sizes = (4, 0)
    c.study.seeds = 2
    c.study.source_steps, c.study.target_steps = 6, 4
    c.study.probe_images = 6
    return c
'''


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    source = data_fixtures.write_msd(root / "Task01_Source", channels=1)
    target = data_fixtures.write_nnunet(root / "Dataset002_Target")
    config = root / "grid.py"
    config.write_text(CONFIG)
    out = root / "out"
    with data_fixtures.cache_env(data_fixtures.session_cache(tmp_path_factory)):
        assert main(["reproduce", "--config", str(config), "--out", str(out), "--source", str(source),
                     "--targets", str(target)]) == 0
        yield {"out": out, "config": config, "source": source, "target": target}


def _metrics_mtimes(out: Path) -> dict:
    return {str(p): p.stat().st_mtime_ns for p in out.rglob("metrics.jsonl")}


def test_report_and_results_agree(study):
    out = study["out"]
    results = json.loads((out / "results.json").read_text())
    report = (out / "report.md").read_text()
    claims = {row["claim"]: row for row in results["claims"]}
    assert sorted(claims) == ["1", "2", "3", "4", "5a", "5b", "5c"]
    for key, row in claims.items():
        assert row["verdict"] in ("supported", "not supported", "mixed", "insufficient data")
        assert f"| {key} |" in report and row["rule"] in report  # the table and its pre-registered rule
    # 2 sizes × 4 regimes × 2 seeds, each Dice the run's own evaluation summary
    assert len(results["runs"]) == 16 and len(results["source"]) == 2
    for run in results["runs"]:
        summary = json.loads((Path(run["workdir"]) / "summary.json").read_text())
        assert run["test_dice"] == summary["foreground_mean"]["Dice"]
        assert 0.0 <= run["test_dice"] <= 1.0
    # every figure the report names exists and is a PNG
    figures = [line.split("](")[1].rstrip(")") for line in report.splitlines() if line.startswith("![")]
    assert len(figures) >= 7
    for figure in figures:
        assert (out / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", figure
    target = next(iter(results["evolution"]))
    assert set(results["evolution"][target]) == {"random", "transfer", "frozen_random"}
    for evo in results["evolution"][target].values():
        assert evo["steps"][0] == 0 and evo["steps"][-1] == 4
        assert all(v[0] == pytest.approx(1.0, abs=1e-4) for v in evo["vs_init"].values())
    assert "about" in results and "total time" in results["about"]


def test_conditions_train_as_programs_from_their_own_source_seed(study):
    out = study["out"]
    condition = out / "runs" / "Dataset002_Target" / "nall" / "transfer"
    assert json.loads((condition / "seeds.json").read_text())["seeds"] == [0, 1]
    sources = [load_params(str(out / "source" / f"seed_{s}")) for s in (0, 1)]
    for seed in (0, 1):
        member = str(condition / f"seed_{seed}")
        assert snapshot_steps(member)[0] == 0
        start = load_params(member, 0)
        for other, source in enumerate(sources):
            same = jax.tree.all(jax.tree.map(np.array_equal, start["encoder"], source["encoder"]))
            assert same == (other == seed), (seed, other)


def test_rerun_trains_nothing_and_reevaluates_only_what_is_missing(study):
    out = study["out"]
    before = _metrics_mtimes(out)
    removed = out / "runs" / "Dataset002_Target" / "n4" / "frozen_random" / "seed_1" / "summary.json"
    removed.unlink()
    assert main(["reproduce", "--config", str(study["config"]), "--out", str(out), "--source", str(study["source"]),
                 "--targets", str(study["target"])]) == 0
    assert removed.is_file()
    assert _metrics_mtimes(out) == before
