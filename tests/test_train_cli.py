"""`jaxfcn train|evaluate|predict`: help everywhere; bad input is one line, exit 2, and writes nothing."""
import os

import pytest

from jaxfcn.cli import main
from jaxfcn.config import load_config
from jaxfcn.data.dataset import DatasetInfo
from jaxfcn.train.workdir import create_workdir
from train_helpers import write_tiny_config


@pytest.mark.parametrize("command", ["train", "evaluate", "predict"])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "--workdir" in capsys.readouterr().out


@pytest.fixture
def setup(tmp_path):
    """A tiny config on the built-in tissue task and a run directory that owns it (no training needed:
    every refusal happens before parameters are read)."""
    config = write_tiny_config(tmp_path / "tiny.py")
    resolved = load_config(config)
    resolved.model.num_classes, resolved.model.in_channels = 4, 1
    info = DatasetInfo("tissue", ("background", "grey_matter", "white_matter", "other_intracranial"), 1, 2, (32, 32))
    owned = str(tmp_path / "owned")
    create_workdir(owned, resolved, info)
    return {"config": config, "owned": owned}


CASES = {
    "unknown_key": (["--set", "model.widht=3"], "unknown config key 'model.widht'"),
    "wrong_type": (["--set", "train.steps=many"], "wrong type for 'train.steps'"),
    "bad_value": (["--set", "train.optimizer=adagrad"], "train.optimizer: 'adagrad' is not one of"),
    "init_missing": (["--init", "{tmp}/nowhere"], "not 'random' and not a directory"),
    "init_not_a_run": (["--init", "{tmp}"], "not a jaxfcn workdir"),
    "init_arch": (["--init", "{owned}", "--set", "model.base_width=8"], "architecture differs"),
    "no_dataset": (["--data", "{tmp}/no_such_task"], "no_such_task"),
    "other_config": (["--set", "train.learning_rate=0.1"], "belongs to a different config"),
    "bad_freeze": (["--freeze", "encoder,neck"], "unknown part 'neck'"),
    "missing_config": (["--config", "{tmp}/none.py"], "config file not found"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_train_input_is_one_line_and_writes_nothing(setup, case, capsys, tmp_path):
    extra, expected = CASES[case]
    extra = [a.format(tmp=tmp_path, owned=setup["owned"]) for a in extra]
    workdir = setup["owned"] if case == "other_config" else str(tmp_path / "new")
    before = sorted(os.listdir(workdir)) if os.path.exists(workdir) else None
    args = ["train", "--config", setup["config"], "--workdir", workdir, "--no-progress"]
    assert main(args + extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("jaxfcn: error: ") and expected in err[0], err
    assert (sorted(os.listdir(workdir)) if os.path.exists(workdir) else None) == before


def test_bad_evaluate_and_predict_input(setup, capsys, tmp_path):
    cases = [
        (["evaluate", "--workdir", str(tmp_path)], "not a jaxfcn workdir"),
        (["evaluate", "--workdir", setup["owned"], "--data", str(tmp_path / "none")], "none"),
        (["evaluate", "--workdir", setup["owned"]], "no saved parameters"),
        (["predict", "--workdir", setup["owned"], "--input", str(tmp_path / "in.nii.gz"), "--output",
          str(tmp_path / "out.nii.gz")], "file not found"),
        (["predict", "--workdir", setup["owned"], "--input", setup["config"], "--output",
          str(tmp_path / "out.png")], "must end in .nii or .nii.gz"),
    ]
    for args, expected in cases:
        assert main(args + (["--no-progress"] if args[0] == "evaluate" else [])) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], (args, err)
    assert not os.path.exists(tmp_path / "out.nii.gz")
