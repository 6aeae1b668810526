"""jaxfcn.partition: labels, split/merge, transfer of parts, head initialisations (plain trees, no model)."""
import numpy as np
import pytest

from jaxfcn.partition import merge_params, param_labels, split_params, transfer_params, with_head, zero_head


def tree(seed: int, classes: int = 3) -> dict:
    rng = np.random.default_rng(seed)
    return {"encoder": {"block_0": {"conv_0": {"kernel": rng.normal(size=(3, 3, 1, 4))}}},
            "decoder": {"block_0": {"conv_0": {"kernel": rng.normal(size=(3, 3, 8, 4))}}},
            "head": {"kernel": rng.normal(size=(1, 1, 4, classes)), "bias": rng.normal(size=(classes,))}}


def test_labels_and_split_merge_round_trip():
    params = tree(0)
    assert param_labels(params)["decoder"]["block_0"]["conv_0"]["kernel"] == "decoder"
    trainable, frozen = split_params(params, ("encoder",))
    assert list(trainable) == ["decoder", "head"] and list(frozen) == ["encoder"]
    assert merge_params(trainable, frozen) == params and list(merge_params(frozen, trainable)) == list(params)


def test_transfer_replaces_exactly_the_listed_parts():
    target, source = tree(0), tree(1)
    out = transfer_params(target, source, ("encoder",))
    assert out["encoder"] is source["encoder"]
    assert out["decoder"] is target["decoder"] and out["head"] is target["head"]
    with pytest.raises(ValueError, match="architectures differ"):
        transfer_params(target, tree(1, classes=5), ("head",))
    with pytest.raises(ValueError, match="unknown transfer part"):
        transfer_params(target, source, ("bottleneck",))


def test_head_choices():
    params = tree(0)
    zero = zero_head(params)
    assert not np.any(zero["head"]["kernel"]) and not np.any(zero["head"]["bias"])
    assert zero["encoder"] is params["encoder"] and zero["decoder"] is params["decoder"]
    kernel, bias = np.arange(12.0).reshape(4, 3), np.array([1.0, 2.0, 3.0])
    out = with_head(params, kernel, bias)  # a (C_in, K) matrix becomes the 1×1 kernel
    np.testing.assert_array_equal(out["head"]["kernel"], kernel.reshape(1, 1, 4, 3))
    np.testing.assert_array_equal(out["head"]["bias"], bias)
    assert params["head"]["kernel"].shape == (1, 1, 4, 3) and not np.array_equal(params["head"]["bias"], bias)
    with pytest.raises(ValueError, match="head must be kernel"):
        with_head(params, np.zeros((4, 5)), np.zeros(5))
