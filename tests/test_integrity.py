"""Damaged saved parameters are refused by name, never used (jaxfcn.train.integrity).

On a real tiny run of the built-in tissue task: flipped bits in the final snapshot's largest data file,
or damaged orbax metadata, make ``jaxfcn evaluate`` (and ``predict``, ``train --init``) fail with one line
that names the step and the file; before the manifests, evaluate reported Dice 0.000 with exit 0 or died
with a UnicodeDecodeError traceback. A resume past a damaged checkpoint goes on from the newest one that
verifies and ends bitwise where the undamaged run ended.
"""
import glob
import json
import os
import shutil
import subprocess
import sys

import jax
import nibabel as nib
import numpy as np
import pytest

from jaxfcn.cli import main
from jaxfcn.train import checkpoint, integrity
from test_checkpoint import flip_middle_bits, largest_data_file
from train_helpers import write_tiny_config

STEPS = 6  # TINY_REAL: checkpoints at 3 and 6, snapshots at 0, 1, 3, 6


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("integrity")
    config = write_tiny_config(root / "tiny.py")
    workdir = str(root / "run")
    assert main(["train", "--config", config, "--workdir", workdir, "--no-progress"]) == 0
    return {"config": config, "workdir": workdir}


def copy_of(trained, tmp_path) -> str:
    copy = str(tmp_path / "run")
    shutil.copytree(trained["workdir"], copy)
    return copy


def error_lines(err: str) -> list[str]:
    return [line for line in err.strip().splitlines() if not line.startswith("jaxfcn: note:")]


def test_flipped_bits_in_snapshot_are_one_line_naming_step_and_file(trained, tmp_path, capsys):
    workdir = copy_of(trained, tmp_path)
    damaged = largest_data_file(os.path.join(workdir, "snapshots", str(STEPS)))
    flip_middle_bits(damaged)
    capsys.readouterr()

    assert main(["evaluate", "--workdir", workdir, "--no-progress"]) == 2
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith("jaxfcn: error: "), err
    assert f"snapshot step {STEPS} of" in err[0] and damaged in err[0] and "SHA-256" in err[0], err[0]
    assert not os.path.exists(os.path.join(workdir, "summary.json"))

    image = str(tmp_path / "case.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((24, 24, 8), np.float32), np.diag([6.0, 6.0, 6.0, 1.0])), image)
    assert main(["predict", "--workdir", workdir, "--input", image, "--output", str(tmp_path / "seg.nii.gz")]) == 2
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and damaged in err[0], err
    assert not os.path.exists(tmp_path / "seg.nii.gz")

    target = str(tmp_path / "transfer")  # --init from the damaged run: refused before anything is written
    assert main(["train", "--config", trained["config"], "--workdir", target, "--init", workdir, "--no-progress"]) == 2
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and damaged in err[0], err
    assert not os.path.exists(target)


def test_damaged_metadata_is_one_line_without_traceback(trained, tmp_path):
    workdir = copy_of(trained, tmp_path)
    metadata = os.path.join(workdir, "snapshots", str(STEPS), "default", "_METADATA")
    flip_middle_bits(metadata)
    result = subprocess.run([sys.executable, "-m", "jaxfcn", "evaluate", "--workdir", workdir, "--no-progress"],
                            capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jaxfcn: error: ") and metadata in lines[0], result.stderr


def test_damaged_metadata_without_manifest_is_one_line_naming_the_file(trained, tmp_path, capsys):
    """A run saved before the manifests existed: orbax's UnicodeDecodeError becomes one line."""
    workdir = copy_of(trained, tmp_path)
    for manifest in glob.glob(os.path.join(workdir, "*", "*", integrity.MANIFEST_FILE)):
        os.unlink(manifest)
    metadata = os.path.join(workdir, "snapshots", str(STEPS), "default", "_METADATA")
    flip_middle_bits(metadata)
    capsys.readouterr()
    assert main(["evaluate", "--workdir", workdir, "--no-progress"]) == 2
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and f"snapshot step {STEPS} of" in err[0] and f"{metadata} does not decode" in err[0], err


def test_resume_goes_on_from_the_newest_checkpoint_that_verifies(trained, tmp_path, capsys):
    workdir = copy_of(trained, tmp_path)
    for kind in ("checkpoints", "snapshots"):
        flip_middle_bits(largest_data_file(os.path.join(workdir, kind, str(STEPS))))
    capsys.readouterr()

    assert main(["train", "--config", trained["config"], "--workdir", workdir, "--no-progress"]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if "damaged" in line]
    assert len(err) == 1 and f"checkpoint step {STEPS} of" in err[0], err
    assert err[0].endswith("resuming from step 3, the newest checkpoint that verifies"), err[0]
    summary = json.load(open(os.path.join(workdir, "train_summary.json")))
    assert summary["resumed_at"] == [3] and summary["final_step"] == STEPS
    assert os.listdir(os.path.join(workdir, "damaged", "checkpoints")) == [str(STEPS)]
    for step in (STEPS, "best"):  # the retrained checkpoint and snapshot are the undamaged run's, bitwise
        for a, b in zip(jax.tree.leaves(checkpoint.load_params(workdir, step)),
                        jax.tree.leaves(checkpoint.load_params(trained["workdir"], step)), strict=True):
            assert np.array_equal(a, b)
