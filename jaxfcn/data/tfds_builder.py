"""The tensorflow-datasets builder that writes prepared examples as array_record files.

The builder is not registered by name (``skip_registration``): reading goes through
``tfds.data_source("jaxfcn_prepared", data_dir=...)``, which restores the features from the files that
were written, so reading needs no knowledge of how the examples were made. TensorFlow is never imported:
tfds serialises plain numpy tensors itself for the array_record format.
"""
from __future__ import annotations

import contextlib
import io
import os
from typing import Callable, Iterable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # tfds probes for TF; keep its banner away from users

import numpy as np  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

BUILDER_NAME = "jaxfcn_prepared"
SPLIT_BUFFER_BYTES = 64 << 30  # largest split written without TensorFlow (held in memory while written)


class PreparedExamples(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Fixed-shape ``{"image", "label", "case", "axis", "position"}`` examples, one array_record per split.

    ``splits`` maps split name to a zero-argument callable yielding example dicts; generation order is
    kept (shuffling disabled), so index ``i`` of a split is the ``i``-th example made.
    """

    name = BUILDER_NAME
    VERSION = tfds.core.Version("1.0.0")

    def __init__(self, *, example_shape: tuple[int, ...], channels: int,
                 splits: dict[str, Callable[[], Iterable[dict]]], **kwargs):
        self._example_shape = tuple(example_shape)
        self._channels = channels
        self._splits = splits
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        features = tfds.features.FeaturesDict({
            # Raw bytes: the default encoding writes one protobuf list entry per voxel (an int64 for each
            # label voxel), which made serialisation most of the preparation time.
            "image": tfds.features.Tensor(shape=self._example_shape + (self._channels,), dtype=np.float32,
                                          encoding=tfds.features.Encoding.BYTES),
            "label": tfds.features.Tensor(shape=self._example_shape, dtype=np.uint8,
                                          encoding=tfds.features.Encoding.BYTES),
            "case": tfds.features.Scalar(dtype=np.int32),  # index into the split's case list
            "axis": tfds.features.Scalar(dtype=np.int32),  # 2D: slicing axis (0 sag, 1 cor, 2 ax); 3D: -1
            "position": tfds.features.Scalar(dtype=np.int32),  # 2D: slice index; 3D: flat patch start
        })
        return tfds.core.DatasetInfo(builder=self, features=features, disable_shuffling=True,
                                     description="jaxfcn prepared segmentation examples")

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(make) for split, make in self._splits.items()}

    def _generate_examples(self, make):
        for index, example in enumerate(make()):
            yield index, example


def write(data_dir: str, example_shape, channels: int, splits: dict[str, Callable[[], Iterable[dict]]]) -> None:
    """Write the splits into ``data_dir`` (tfds' own progress bars and banner are silenced; callers show theirs)."""
    tfds.disable_progress_bar()
    # tfds buffers a split's serialised examples in memory and spills beyond 1 GB to temporary files
    # through tf.io.gfile, i.e. TensorFlow, which jaxfcn does not install: keep every split in memory.
    from tensorflow_datasets.core import shuffle

    shuffle.MAX_MEM_BUFFER_SIZE = max(shuffle.MAX_MEM_BUFFER_SIZE, SPLIT_BUFFER_BYTES)
    builder = PreparedExamples(example_shape=example_shape, channels=channels, splits=splits, data_dir=data_dir,
                               file_format="array_record")
    with contextlib.redirect_stdout(io.StringIO()):  # tfds prints "Downloading and preparing dataset ..."
        builder.download_and_prepare()


def read(data_dir: str) -> dict:
    """``{split: ArrayRecordDataSource}`` of a prepared directory."""
    return dict(tfds.data_source(BUILDER_NAME, data_dir=data_dir))
