"""``jaxfcn reproduce`` shows where it stands: one bar over the conditions, weighed by seed-steps, a line
per seed, and at the end the report's path and a one-line verdict summary.

A tiny study (an MSD source, an nnU-Net target, one size, two regimes, two seeds: three conditions) runs
through the CLI; a rerun finds every condition done, trains nothing and starts its bar full. Its TensorBoard
event files lie one folder per seed inside the condition's folder, so `tensorboard --logdir` names every run
by condition and seed, and the regex ``(.*)/seed_\\d+`` groups the seeds of a condition. The study runs once,
in the module's fixture, so every test sees it whichever xdist worker runs it.
"""
from __future__ import annotations

import contextlib
import io
import json
import re
import sys
import types
from pathlib import Path

import pytest

from jaxfcn.cli import main
from jaxfcn.config import base_config
from jaxfcn.reproduce.grid import conditions, plan
from jaxfcn.reproduce import study
from jaxfcn.reproduce.study import condition_work, verdict_line

sys.path.insert(0, str(Path(__file__).parent))
import data_fixtures  # noqa: E402
from test_reproduce_study import CONFIG  # noqa: E402

# test_reproduce_study's tiny grid (2 levels of width 4, 32² slices, 6 source / 4 target steps), smaller still
SMALLER = ["study.train_sizes=(1,)", "study.regimes=('random', 'transfer')", "study.seeds=2",
           "study.cka_permutations=20"]


def test_conditions_are_weighed_by_steps_times_seeds(tmp_path):
    c = base_config()
    c.study.source, c.study.targets = "tissue", ("lobes", "structures")
    c.study.train_sizes, c.study.regimes, c.study.seeds = (1, 3), ("random", "transfer"), 3
    c.study.source_steps, c.study.target_steps, c.study.target_steps_by_task = 800, 500, "lobes=900"
    sources, targets = plan(c, str(tmp_path))
    work = {tuple(r.workdir for r in group): condition_work(group, c) for group in conditions(sources + targets)}
    assert len(work) == 1 + 2 * 2 * 2
    weights = sorted(set(work.values()))
    assert weights == [500 * 3, 800 * 3, 900 * 3]  # structures' conditions, the source, lobes' conditions
    assert sum(work.values()) == 800 * 3 + 4 * 900 * 3 + 4 * 500 * 3


def test_verdict_line_lists_every_claim_in_order():
    claims = [{"claim": "1", "verdict": "mixed"}, {"claim": "2", "verdict": "not supported"},
              {"claim": "5a", "verdict": "supported"}]
    assert verdict_line(claims) == "claims: 1 mixed, 2 not supported, 5a supported"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    with data_fixtures.study_folders(tmp_path_factory, "progress", CONFIG) as f:
        out = f["root"] / "out"
        args = ["reproduce", "--config", str(f["config"]), "--out", str(out), "--source", str(f["source"]),
                "--targets", str(f["target"]), *[a for item in SMALLER for a in ("--set", item)]]
        stdout, stderr = io.StringIO(), io.StringIO()
        reports = []  # per condition: the seed-steps the training loop reported to the study's bar as it trained
        real_execute = study.execute

        def recording_execute(condition, *args, on_seed_steps, **kwargs):
            reports.append([])
            return real_execute(condition, *args, **kwargs,
                                on_seed_steps=lambda n: (reports[-1].append(n), on_seed_steps(n)))

        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr), \
                pytest.MonkeyPatch.context() as patch:
            patch.setattr(study, "execute", recording_execute)
            code = main(args)
        yield {"out": out, "args": args, "code": code, "stdout": stdout.getvalue(), "stderr": stderr.getvalue(),
               "reports": reports}


def _bar_states(stderr: str) -> list[str]:
    """Every state the study bar was drawn in (tqdm redraws with carriage returns)."""
    return [s.strip() for s in re.split(r"[\r\n]", stderr) if s.strip().startswith("study ")]


def test_final_lines_name_the_report_and_every_verdict(tiny):
    assert tiny["code"] == 0, tiny["stderr"][-2000:]
    captured = types.SimpleNamespace(out=tiny["stdout"], err=tiny["stderr"])
    results = json.loads((tiny["out"] / "results.json").read_text())
    lines = captured.out.strip().splitlines()
    assert lines[-2] == f"report: {tiny['out'] / 'report.md'}" and (tiny["out"] / "report.md").is_file()
    assert lines[-1] == "claims: " + ", ".join(f"{r['claim']} {r['verdict']}" for r in results["claims"])
    assert [r["claim"] for r in results["claims"]] == ["1", "2", "3", "4", "5a", "5b", "5c"]
    # one line per seed: 2 sources + 2 regimes × 2 seeds
    assert len(re.findall(r"^done  ", captured.out + captured.err, flags=re.M)) == 6
    # the bar: 2 sources × 6 steps + 2 conditions × 2 seeds × 4 steps = 28 seed-steps over 3 conditions
    states = _bar_states(captured.err)
    assert states and "0/28 seed-steps, conditions 0/3" in states[0]
    assert any("0/28 seed-steps, conditions 0/3, now source Task01_Source" in s for s in states)
    assert "100%" in states[-1] and "28/28 seed-steps" in states[-1] and "conditions 3/3" in states[-1]
    assert any("12/28 seed-steps" in s and "conditions 1/3" in s for s in states)  # after the source program
    assert all(re.search(r"\[\d\d:\d\d elapsed, [\d:?]+ left\]", s) for s in states)
    # … and it moves while a condition trains: every flush of the training loop (log steps, snapshots
    # "log:2" = steps 1, 2, 4) reports the seed-steps since the previous one
    assert tiny["reports"] == [[2, 2, 4, 4], [2, 2, 4], [2, 2, 4]]  # the source: 2 seeds × 6 steps; 2 × 4 twice


def test_a_rerun_starts_full_and_trains_nothing(tiny, capsys):
    before = {str(p): p.stat().st_mtime_ns for p in tiny["out"].rglob("metrics.jsonl")}
    assert main(tiny["args"]) == 0
    captured = capsys.readouterr()
    assert {str(p): p.stat().st_mtime_ns for p in tiny["out"].rglob("metrics.jsonl")} == before
    states = _bar_states(captured.err)
    assert states and all("28/28 seed-steps" in s and "conditions 3/3" in s for s in states)
    assert "done  " not in captured.out + captured.err
    assert captured.out.strip().splitlines()[-1].startswith("claims: 1 ")


def test_tensorboard_runs_are_named_by_condition_and_seed(tiny):
    runs = {str(p.parent.relative_to(tiny["out"])) for p in tiny["out"].rglob("events.out.tfevents.*")}
    conditions = {"source": (1000, 1001), "runs/Dataset002_Target/n1/random": (0, 1),
                  "runs/Dataset002_Target/n1/transfer": (0, 1)}
    assert runs == {f"{c}/seed_{s}" for c, seeds in conditions.items() for s in seeds}
    # TensorBoard's "group runs by regex" keys a run by its capture groups: one group per condition
    assert {re.fullmatch(r"(.*)/seed_\d+", run).group(1) for run in runs} == set(conditions)
