"""``--init``: a source whose parts compute another function here is refused (one line naming the source
and the differing keys); keys that change no transferred function are accepted.

No training is needed: the architecture check comes before the source's saved parameters are looked
for, so an accepted source without parameters stops at "no saved parameters" instead.
"""
import re

import pytest

from jaxfcn.cli import main
from jaxfcn.config import load_config
from jaxfcn.data.dataset import DatasetInfo
from jaxfcn.partition import TRANSFER_KEYS, transfer_differences
from jaxfcn.train.workdir import create_workdir
from train_helpers import write_tiny_config

INFO = DatasetInfo("tissue", ("background", "grey_matter", "white_matter", "other_intracranial"), 1, 2, (32, 32))


def make_source(tmp_path, **changes) -> str:
    """A workdir that owns the tiny config with ``changes`` (never trained)."""
    config = load_config(write_tiny_config(tmp_path / "source.py", **changes))
    config.model.num_classes, config.model.in_channels = 4, 1
    workdir = str(tmp_path / "source")
    create_workdir(workdir, config, INFO)
    return workdir


CASES = {  # source config changes → the keys the refusal must name ([] = accepted)
    "norm_groups": ({"model__norm_groups": 4}, ["norm_groups"]),
    "activation": ({"model__activation": "gelu"}, ["activation"]),
    "norm_and_width": ({"model__norm": "instance", "model__base_width": 8}, ["base_width", "norm"]),
    "convs_kernel": ({"model__convs_per_block": 1, "model__kernel_size": 5}, ["convs_per_block", "kernel_size"]),
    "kernel_init": ({"model__kernel_init": "glorot_uniform"}, []),
    "conv_impl": ({"model__conv_impl": "im2col"}, []),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_mismatched_transfer_is_refused(case, tmp_path, capsys):
    changes, keys = CASES[case]
    source = make_source(tmp_path, **changes)
    target = write_tiny_config(tmp_path / "target.py")
    assert main(["train", "--config", target, "--workdir", str(tmp_path / "new"), "--init", source,
                 "--no-progress"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"jaxfcn: error: --init {source}: "), line
    if keys:
        assert "architecture differs" in line and re.findall(r"model\.(\w+):", line) == keys, line
    else:
        assert "no saved parameters" in line, line  # past the architecture check
    if case == "activation":
        assert "(model.activation: gelu in the source, relu here)" in line
    assert not (tmp_path / "new").exists()


def test_transfer_differences_rule():
    source = {"norm": "instance", "norm_groups": 2, "activation": "relu", "kernel_size": 3}
    target = {**source, "norm_groups": 8, "kernel_init": "lecun_normal", "num_classes": 9}
    assert transfer_differences(source, target) == []  # groups matter only for group norm
    assert transfer_differences({**source, "norm": "group"}, {**target, "norm": "group"}) == [
        "model.norm_groups: 2 in the source, 8 here"]
    assert "num_classes" not in TRANSFER_KEYS and "kernel_init" not in TRANSFER_KEYS
