"""`jaxfcn import-torch`: a PyTorch state_dict becomes a workdir that evaluate and load_params accept."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from jaxfcn.cli import main  # noqa: E402
from jaxfcn.config import load_config  # noqa: E402
from jaxfcn.interop.torch import TorchUNet  # noqa: E402
from jaxfcn.models import build_model  # noqa: E402
from jaxfcn.train.checkpoint import load_params, load_variables, snapshot_steps  # noqa: E402
from jaxfcn.config_checks import resolve_config  # noqa: E402
from jaxfcn.train.loop import open_training_data  # noqa: E402
from jaxfcn.train.workdir import load_run_config  # noqa: E402
from train_helpers import write_tiny_config  # noqa: E402


@pytest.fixture(scope="module")
def torch_models(tmp_path_factory):
    """(config path, resolved config, trained-looking and initial state_dict paths) for the tiny tissue U-Net."""
    root = tmp_path_factory.mktemp("import")
    config_path = write_tiny_config(root / "tiny.py", train__steps=40)
    config = resolve_config(load_config(config_path), open_training_data(load_config(config_path), False).info)
    torch.manual_seed(0)
    net = TorchUNet(config)
    torch.save(net.state_dict(), root / "init.pt")
    with torch.no_grad():  # "training": move every weight so step 0 and the final step differ
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    torch.save(net.state_dict(), root / "final.pt")
    return config_path, config, str(root / "final.pt"), str(root / "init.pt"), net.eval()


def test_import_then_evaluate(torch_models, tmp_path, capsys):
    config_path, config, final, init, net = torch_models
    workdir = str(tmp_path / "from_torch")
    assert main(["import-torch", "--state-dict", final, "--initial-state-dict", init, "--config", config_path,
                 "--workdir", workdir, "--no-progress"]) == 0
    assert snapshot_steps(workdir) == [0, 40]
    assert load_run_config(workdir).model.num_classes == config.model.num_classes
    record = json.loads(open(os.path.join(workdir, "import_torch.json")).read())
    assert record["step"] == 40 and record["state_dict"] == os.path.abspath(final)
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]  # no temporary directory left

    # the workdir's params compute the PyTorch model's function
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 1)).astype(np.float32)
    params = load_params(workdir)
    ours = build_model(config.model).apply({"params": params}, x)
    with torch.no_grad():
        theirs = net(torch.from_numpy(np.moveaxis(x, -1, 1).copy())).numpy()
    np.testing.assert_allclose(ours, np.moveaxis(theirs, 1, -1), rtol=1e-4, atol=1e-5)
    first, _ = load_variables(workdir, step=0)
    assert not np.array_equal(first["params"]["head"]["kernel"], params["head"]["kernel"])

    capsys.readouterr()
    assert main(["evaluate", "--workdir", workdir, "--split", "val", "--no-progress"]) == 0
    summary = json.loads(open(os.path.join(workdir, "summary.json")).read())
    assert summary["step"] == 40 and summary["num_cases"] >= 1

    # the analyses read it like any run: evolution over its two snapshots, and CKA (run × run, per layer)
    out = tmp_path / "analysis"
    assert main(["analyze", "evolution", "--run", workdir, "--out", str(out / "evo"), "--probes", "8"]) == 0
    evolution = json.loads((out / "evo" / "evolution.json").read_text())
    assert "steps" in json.dumps(evolution) and (out / "evo" / "evolution.png").is_file()
    assert main(["analyze", "cka", "--runs", workdir, workdir, "--out", str(out / "cka"), "--probes", "8"]) == 0
    cka = np.load(out / "cka" / "cka.npz")["cka"]
    np.testing.assert_allclose(np.einsum("aibi->abi", cka)[0, 1], 1.0, atol=1e-4)  # same run: CKA 1 per layer


def test_mismatched_state_dict_leaves_nothing(torch_models, tmp_path, capsys):
    config_path, config, final, _, _ = torch_models
    workdir = tmp_path / "bad"
    code = main(["import-torch", "--state-dict", final, "--config", config_path, "--workdir", str(workdir),
                 "--set", "model.base_width=8", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("jaxfcn: error: --state-dict") and "shape" in err and err.count("\n") == 1
    assert not workdir.exists() and os.listdir(tmp_path) == []


def test_existing_workdir_and_bad_file_are_refused(torch_models, tmp_path, capsys):
    config_path, _, final, _, _ = torch_models
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("x")
    assert main(["import-torch", "--state-dict", final, "--config", config_path, "--workdir", str(taken)]) == 2
    assert "not an empty directory" in capsys.readouterr().err and os.listdir(taken) == ["keep.txt"]
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    assert main(["import-torch", "--state-dict", str(junk), "--config", config_path,
                 "--workdir", str(tmp_path / "w"), "--no-progress"]) == 2
    assert "not a loadable PyTorch state_dict" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()
