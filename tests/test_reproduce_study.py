"""``jaxfcn reproduce`` end to end on MSD-format folders written from the real built-in volumes.

One tiny grid (source: an MSD folder; target: an nnU-Net folder; 2 sizes × 3 regimes × 3 seeds, each
condition one 3-seed program) run through the CLI, then checked: the report's first line calls it a smoke
test, both titles of the paper are cited, the claims table and tests are the ones in ``results.json``,
every run keeps its per-case Dice, the CKA carries both null baselines, transfer seed n starts from
source seed n, and re-running trains nothing. A second grid diverges on purpose: it is recorded, the
study finishes, and a rerun does not retrain it.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxfcn.cli import main
from jaxfcn.config import base_config
from jaxfcn.analysis.filters import kernel_leaves
from jaxfcn.reproduce import report as report_module
from jaxfcn.reproduce.grid import SOURCE_SEED_OFFSET
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
    c.study.train_sizes = (1, 0)
    c.study.regimes = ("random", "transfer", "frozen_random")
    c.study.seeds = 3
    c.study.source_steps, c.study.target_steps = 6, 4
    c.study.probe_images = 6
    c.study.cka_permutations = 30
    c.study.cka_null_widths = (2, 4)
    return c
'''
TITLES = ("Critical Assessment of Transfer Learning for Medical Image Segmentation with Fully Convolutional "
          "Neural Networks", "Transfer Learning in Medical Image Segmentation: New Insights from Analysis of the "
          "Dynamics of Model Parameters and Learned Representations")


def _reproduce(out, config, source, target, *extra) -> int:
    return main(["reproduce", "--config", str(config), "--out", str(out), "--source", str(source),
                 "--targets", str(target), *extra])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    with data_fixtures.study_folders(tmp_path_factory, "study", CONFIG) as folders:
        yield folders


@pytest.fixture(scope="module")
def study(data):
    out = data["root"] / "out"
    assert _reproduce(out, data["config"], data["source"], data["target"]) == 0
    return dict(data, out=out)


def _metrics_mtimes(out: Path) -> dict:
    return {str(p): p.stat().st_mtime_ns for p in out.rglob("metrics.jsonl")}


def test_report_and_results_agree(study):
    out = study["out"]
    results = json.loads((out / "results.json").read_text())
    report = (out / "report.md").read_text()
    first_line = report.splitlines()[0]
    assert first_line.startswith("**Pipeline smoke test, not a finding**") and "seeds: 3" in first_line
    assert all(title in report for title in TITLES) and "10.1016/j.artmed.2021.102078" in report
    claims = {row["claim"]: row for row in results["claims"]}
    assert sorted(claims) == ["1", "2", "3", "4", "5a", "5b", "5c"]
    for key, row in claims.items():
        assert row["verdict"] in ("supported", "not supported", "mixed", "insufficient data")
        assert f"| {key} |" in report and row["rule"] in report  # the table and its pre-registered rule
    # 4 steps learn nothing: the floor makes claims 1, 2 and 4 insufficient instead of dividing by ~0
    assert {claims[k]["verdict"] for k in ("1", "2", "4")} == {"insufficient data"}
    tests = {t["name"]: t for t in results["tests"]}
    assert tests and all(0 <= t["p_holm"] <= 1 for t in tests.values() if t["p"] is not None)
    assert all(name in report for name in tests)
    assert "## Deviations" in report and results["rules"]["deviations"][0]["date"] in report
    # 2 sizes × 3 regimes × 3 seeds, each with its own evaluation summary, case by case
    assert len(results["runs"]) == 18 and len(results["source"]) == 3
    for run in results["runs"]:
        summary = json.loads((Path(run["workdir"]) / "summary.json").read_text())
        assert run["status"] == "ok" and run["test_dice"] == summary["foreground_mean"]["Dice"]
        assert run["test_cases"] == {c["case_id"]: c["metrics"]["mean"]["Dice"] for c in summary["metric_per_case"]}
        assert run["val_curve"]["steps"] == [2, 4] and run["test_dice_real"] is None  # no *_real case in user data
        train_summary = json.loads((Path(run["workdir"]) / "train_summary.json").read_text())
        assert train_summary["val_dice_auc"] == pytest.approx(run["val_dice_auc"])
    # every figure the report names exists and is a PNG
    figures = [line.split("](")[1].rstrip(")") for line in report.splitlines() if line.startswith("![")]
    assert len(figures) >= 8
    for figure in figures:
        assert (out / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", figure
    target = next(iter(results["evolution"]))
    assert set(results["evolution"][target]) == {"random", "transfer", "frozen_random"}
    for evo in results["evolution"][target].values():
        assert evo["steps"][0] == 0 and evo["steps"][-1] == 4
        assert all(v[0] == pytest.approx(1.0, abs=1e-4) for v in evo["vs_init"].values())
    assert "about" in results and "total time" in results["about"] and "phases" in results["about"]
    assert results["design"]["target_steps"] == {"Dataset002_Target": 4}
    assert "target steps Dataset002_Target 4" in report and "seeds 3" in report  # the design line


def test_cka_is_debiased_with_both_null_baselines(study):
    results = json.loads((study["out"] / "results.json").read_text())
    settings = results["cka_settings"]
    assert settings["estimator"] == "debiased" and settings["convention"] == "positions"
    assert settings["positions_within"] == "nonzero"
    by_width = results["cka_untrained_by_width"]["Dataset002_Target"]
    assert by_width["widths"] == [2, 4] and by_width["study_width"] == 4
    assert all(len(v) == 2 and all(-1.0 <= x <= 1.0 for x in v) for v in by_width["mean"].values())
    assert "The untrained baseline depends on width" in (study["out"] / "report.md").read_text()
    assert (study["out"] / "figures" / "cka_untrained_by_width.png").read_bytes()[:4] == b"\x89PNG"
    report = (study["out"] / "report.md").read_text()
    assert "Feature convention: positions: rows = 16 seeded spatial positions of each probe image" in report
    (target, cka), = results["cka"].items()
    assert cka["probes"] == 6 and 0 < cka["rows"] <= 6 * 16 and set(cka["members"]) == {"random", "transfer", "frozen_random", "source", "untrained"}
    models = cka["models"]
    assert [models[i] for i in cka["members"]["untrained"]] == ["untrained/0", "untrained/1", "untrained/2"]
    assert [models[i] for i in cka["members"]["source"]] == ["source/0", "source/1", "source/2"]  # by target seed
    for layer in cka["layers"]:
        m = np.asarray(cka["matrices"][layer])
        np.testing.assert_allclose(np.diag(m), 1.0, atol=1e-5)
        null = cka["permutation_null"][layer]
        assert null["draws"] == 30 and abs(null["mean"]) < 0.3  # debiased: centred near 0 at n = 96 rows
        row = results["cka_summary"][target][layer]
        assert row["within"]["untrained"]["estimate"] is not None and row["permutation"] == null
    assert [t for t in results["tests"] if t["name"].startswith("5b:")]  # 3 seeds: models can be resampled


def test_conditions_train_as_programs_from_their_own_source_seed(study):
    out = study["out"]
    condition = out / "runs" / "Dataset002_Target" / "nall" / "transfer"
    assert json.loads((condition / "seeds.json").read_text())["seeds"] == [0, 1, 2]
    source_dirs = [str(out / "source" / f"seed_{SOURCE_SEED_OFFSET + s}") for s in (0, 1, 2)]
    sources = [load_params(d) for d in source_dirs]
    random_init = out / "runs" / "Dataset002_Target" / "nall" / "random"
    for seed in (0, 1, 2):
        member = str(condition / f"seed_{seed}")
        assert snapshot_steps(member)[0] == 0
        start = load_params(member, 0)
        for other, source in enumerate(sources):
            same = jax.tree.all(jax.tree.map(np.array_equal, start["encoder"], source["encoder"]))
            assert same == (other == seed), (seed, other)
        # a source does not start where the random-init run of the same seed starts (no shared init)
        source_start = kernel_leaves(load_params(source_dirs[seed], 0)["encoder"])
        random_start = kernel_leaves(load_params(str(random_init / f"seed_{seed}"), 0)["encoder"])
        assert source_start and not any(np.array_equal(source_start[k], random_start[k]) for k in source_start)


def test_rerun_trains_nothing_and_resumes_a_lone_seed_in_its_program(study):
    out = study["out"]
    before = _metrics_mtimes(out)
    removed = out / "runs" / "Dataset002_Target" / "n1" / "frozen_random" / "seed_1" / "summary.json"
    removed.unlink()
    lone = out / "runs" / "Dataset002_Target" / "nall" / "random" / "seed_2"
    records = (lone / "metrics.jsonl").read_text()
    for name in ("train_summary.json", "summary.json"):  # as if its program had stopped on another seed's divergence
        (lone / name).unlink()
    assert _reproduce(out, study["config"], study["source"], study["target"]) == 0
    assert removed.is_file() and (lone / "train_summary.json").is_file() and (lone / "summary.json").is_file()
    after = _metrics_mtimes(out)
    assert {p for p in after if after[p] != before[p]} <= {str(lone / "metrics.jsonl")}
    assert (lone / "metrics.jsonl").read_text() == records  # resumed at its final checkpoint: no new step


def test_a_diverged_study_is_recorded_and_not_retrained(data):
    out = data["root"] / "diverged"
    args = ("--set", "train.learning_rate=1e30", "--set", "study.train_sizes=(0,)",
            "--set", "study.regimes=('random', 'transfer')")
    assert _reproduce(out, data["config"], data["source"], data["target"], *args) == 0
    results = json.loads((out / "results.json").read_text())
    assert {r["status"] for r in results["source"]} == {"diverged"}
    assert {(r["regime"], r["status"]) for r in results["runs"]} == {("random", "diverged"),
                                                                     ("transfer", "source diverged")}
    for r in results["source"] + [r for r in results["runs"] if r["regime"] == "random"]:
        assert r["diverged"]["step"] >= 1 and "loss is" in r["diverged"]["message"]
        assert (Path(r["workdir"]) / "diverged.json").is_file() and not (Path(r["workdir"]) / "summary.json").exists()
    assert all(row["verdict"] == "insufficient data" for row in results["claims"])
    report = (out / "report.md").read_text()
    assert "## Diverged runs" in report and report.count("**diverged**") == 3 + 3
    assert report.count("**source diverged**") == 3
    before = _metrics_mtimes(out)
    assert _reproduce(out, data["config"], data["source"], data["target"], *args) == 0
    assert _metrics_mtimes(out) == before


def test_quick_grid_report_says_smoke_test_in_its_first_line():
    design = {"grid": "quick", "targets": ["a", "b", "c"], "train_sizes": [1, 3, 10, 30], "seeds": list(range(5))}
    assert report_module.smoke_test_reasons({"design": design}) == ["the --quick grid"]
    assert report_module.smoke_test_reasons({"design": dict(design, grid="standard")}) == []
    text = report_module.render({"design": design, "claims": []}, {}, ".")
    assert text.splitlines()[0].startswith("**Pipeline smoke test, not a finding**: the --quick grid.")
    assert text.splitlines()[2].startswith("# jaxfcn study")


def test_a_budget_for_a_builtin_task_left_out_by_targets_is_ignored():
    """`jaxfcn reproduce --targets lobes` with the standard config (which budgets deep_nuclei too) runs."""
    from jaxfcn.reproduce.grid import target_steps

    study = base_config().study
    study.targets, study.target_steps, study.target_steps_by_task = ("lobes",), 500, "lobes=900,deep_nuclei=800"
    assert target_steps(study) == {"lobes": 900}


@pytest.mark.parametrize("setting,message", [
    ("study.cka_estimator=rbf", "study.cka_estimator='rbf': choose from"),
    ("study.probe_images=3", "debiased CKA needs at least 4"),
    ("study.cka_convention=pixels", "study.cka_convention='pixels': choose from positions, images"),
    ("study.cka_positions_within=brain", "study.cka_positions_within='brain': choose from all, nonzero"),
    ("study.target_steps_by_task=structures=0", "'structures=0' is not task=steps with steps ≥ 1"),
    ("study.target_steps_by_task=lobez=9", "'lobez' is not a target of this study"),
    ("study.train_sizes=(1, 999)", "training subjects (data.train_subjects); use sizes up to {subjects}, or 0 "
                                   "for all")])
def test_bad_cka_settings_are_refused_before_anything_is_written(setting, message, tmp_path, capsys):
    config = tmp_path / "grid.py"
    config.write_text(CONFIG)
    out = tmp_path / "out"
    assert main(["reproduce", "--config", str(config), "--out", str(out), "--set", setting]) == 2
    subjects = base_config().data.train_subjects  # CONFIG keeps the default: a built-in task generates these
    assert message.format(subjects=subjects) in capsys.readouterr().err and not out.exists()
