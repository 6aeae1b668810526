"""``--set key=value`` overrides: types follow the key, unknown keys and wrong types are one-line errors."""
import os

import pytest

from jaxfcn.config import apply_overrides, base_config, load_config
from jaxfcn.errors import UserError


def test_overrides_follow_the_type_of_the_key():
    c = base_config()
    apply_overrides(c, ["train.snapshot_steps=10,100", "data.task=subcortical", "train.learning_rate=1",
                        "study.train_sizes=(8,0)", "study.targets=a,b", "train.steps=7", "train.init='random'",
                        "study.cka_null_widths=16"])
    assert c.train.snapshot_steps == "10,100"  # a string key keeps the text, not a tuple
    assert c.data.task == "subcortical"
    assert c.train.learning_rate == 1.0 and isinstance(c.train.learning_rate, float)
    assert c.study.train_sizes == (8, 0)
    assert c.study.targets == ("a", "b")
    assert c.train.steps == 7
    assert c.train.init == "random"
    assert c.study.cka_null_widths == (16,)  # one value for a tuple key is a one-element tuple


@pytest.mark.parametrize("item", ["train.nope=1", "nope.steps=1", "train.steps", "train.steps=abc"])
def test_bad_overrides_are_user_errors(item):
    with pytest.raises(UserError, match="--set"):
        apply_overrides(base_config(), [item])


def test_builtin_configs_live_inside_the_package():
    """`jaxfcn reproduce` (no --config) must find its grids after a non-editable install too: the files are
    part of the package (jaxfcn/configs), not only of the checkout."""
    import importlib.resources

    import jaxfcn
    from jaxfcn.reproduce.commands import CONFIG_DIR

    packaged = importlib.resources.files(jaxfcn) / "configs"
    assert os.path.samefile(str(packaged), CONFIG_DIR)
    for name in ("reproduce_quick.py", "reproduce_full.py", "quick.py", "tissue_2d.py"):
        assert (packaged / name).is_file()
        assert load_config(os.path.join(CONFIG_DIR, name)).model.depth >= 2
