"""TensorBoard event files for every run, written next to its ``metrics.jsonl``.

What a run writes (at its log and validation steps only, never per step):

- ``train/loss``, ``train/loss_mean`` (over the steps since the last record), ``train/grad_norm``,
  ``train/learning_rate`` (of the step just taken), ``train/steps_per_s``;
- at each validation: ``val/dice`` (mean foreground Dice) and ``val/dice/<class>`` per foreground class,
  and ``val/predictions``, one image of a few fixed validation examples, each a row of
  *image | ground truth | prediction* (3D: the middle slice of the patch).

The event file lives in the run's workdir, so ``tensorboard --logdir STUDY/runs`` lists a study's runs by
their paths, ``<target>/n<size>/<regime>/seed_<s>``: grouped by condition, one run per seed of a K-seed
program (``seed_<n>``). A resumed run starts a new event file that purges the events past its resume
step, as ``metrics.jsonl`` drops them. Only the primary process of a multi-host run writes.
``JAXFCN_TENSORBOARD=0`` turns the files off (``JAXFCN_TENSORBOARD=scalars``: no images).

Writer: tensorboardX (MIT, pure Python, needs only numpy and protobuf): it writes the event format
without TensorFlow, which jaxfcn never imports. :func:`read_scalars` reads the files back without
TensorBoard.

Example::

    read_scalars("runs/hippo")["val/dice"]       # [(step, value), ...]
"""
from __future__ import annotations

import glob
import os
import struct
import sys

import numpy as np

ENV = "JAXFCN_TENSORBOARD"
EXAMPLES = 4  # validation examples in the prediction image
FLUSH_SECS = 10


def _summary_writer_class():
    """``tensorboardX.SummaryWriter``. tensorboardX imports torch, when installed, only to accept torch
    tensors; that costs seconds and loads torch into a JAX process, so the import is made without it."""
    if "torch" in sys.modules or "tensorboardX" in sys.modules:
        from tensorboardX import SummaryWriter
        return SummaryWriter
    sys.modules["torch"] = None  # `import torch` raises ImportError while this entry is None
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


def mode() -> str:
    """``"all"``, ``"scalars"`` or ``"off"`` from ``$JAXFCN_TENSORBOARD``."""
    value = os.environ.get(ENV, "1").strip().lower()
    return "off" if value in ("0", "off", "false", "no") else "scalars" if value == "scalars" else "all"


def _labels(model, variables, images):
    """Class indices of ``images``; jitted with the model static (one trace per model value, as the eval step)."""
    import jax.numpy as jnp

    return jnp.argmax(model.apply(variables, images, train=False), -1)


def _palette(num_classes: int) -> np.ndarray:
    """(K, 3) RGB in [0, 1]: black background, then the tab10/tab20 colours ``jaxfcn data show`` uses."""
    import matplotlib

    colours = matplotlib.colormaps["tab10" if num_classes <= 11 else "tab20"](np.arange(max(1, num_classes - 1)))
    return np.concatenate([np.zeros((1, 3)), colours[:, :3]])[:num_classes]


def prediction_image(images: np.ndarray, labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """(rows·H, 3·W, 3) uint8: per example, its first channel | ground truth over it | prediction over it."""
    if images.ndim == 5:  # 3D patches (B, X, Y, Z, C): the middle axial slice
        middle = images.shape[3] // 2
        images, labels, predicted = images[:, :, :, middle], labels[:, :, :, middle], predicted[:, :, :, middle]
    palette = _palette(num_classes)
    rows = []
    for image, label, guess in zip(images[..., 0], labels, predicted):
        low, high = np.percentile(image, (1, 99))
        grey = np.repeat(np.clip((image - low) / max(high - low, 1e-6), 0, 1)[..., None], 3, -1)

        def overlay(classes):
            colour = palette[np.clip(classes, 0, num_classes - 1)]
            return np.where((classes > 0)[..., None], 0.45 * colour + 0.55 * grey, grey)

        # each panel turned so the slice's second axis points up, as `jaxfcn data show` draws it
        rows.append(np.concatenate([np.rot90(p) for p in (grey, overlay(label), overlay(guess))], axis=1))
    return (np.concatenate(rows, axis=0) * 255).round().astype(np.uint8)


class Board:
    """One run's event file. ``write(record)`` takes each ``metrics.jsonl`` record; ``predictions`` the
    run's variables at a validation step. Does nothing when off or on a non-primary process."""

    def __init__(self, workdir: str, config, start: int, *, write: bool = True):
        self.config, self.workdir = config, workdir
        self.mode = mode() if write else "off"
        self.writer = None
        if self.mode != "off":
            # The file name holds the second it was opened; the resume step after it keeps a run that
            # resumes within the same second from overwriting its earlier file, and sorts the files in order.
            self.writer = _summary_writer_class()(workdir, purge_step=start + 1 if start else None,
                                                  flush_secs=FLUSH_SECS, filename_suffix=f".{start:010d}")
        self._schedule = self._examples = self._class_names = None

    def _learning_rate(self, step: int) -> float:
        if self._schedule is None:
            from jaxfcn.train.step import learning_rate_schedule

            self._schedule = learning_rate_schedule(self.config.train)
        return float(self._schedule(max(step - 1, 0)))  # the update that produced step ``step``

    def _names(self, count: int) -> list[str]:
        if self._class_names is None:
            try:
                from jaxfcn.train.workdir import load_dataset_info

                self._class_names = list(load_dataset_info(self.workdir).class_names[1:])
            except Exception:  # a workdir without dataset_info.json (not written by this process)
                self._class_names = []
        names = self._class_names if len(self._class_names) == count else [f"class_{i + 1}" for i in range(count)]
        return names

    def write(self, record: dict) -> None:
        if self.writer is None:
            return
        step, add = int(record["step"]), self.writer.add_scalar
        for key in ("loss", "loss_mean", "grad_norm", "steps_per_s"):
            if key in record:
                add(f"train/{key}", float(record[key]), step)
        add("train/learning_rate", self._learning_rate(step), step)
        if "val_dice" in record:
            add("val/dice", float(record["val_dice"]), step)
            per_class = record.get("val_dice_per_class") or []
            for name, value in zip(self._names(len(per_class)), per_class):
                add(f"val/dice/{name}", float(value), step)

    def predictions(self, step: int, variables, dataset) -> None:
        """``val/predictions`` at ``step``: the same few validation examples every time."""
        if self.writer is None or self.mode != "all":
            return
        if self._examples is None:
            if "val" not in dataset.sources or dataset.num_examples("val") == 0:
                self.mode = "scalars"
                return
            batch = next(dataset.eval_batches("val", self.config.train.batch_size, 1))
            label = batch["label"]
            order = np.argsort(-(label > 0).reshape(len(label), -1).sum(1), kind="stable")[:EXAMPLES]
            self._examples = batch["image"][order], label[order]
        import jax

        from jaxfcn.models import build_model

        images, labels = self._examples
        predicted = np.asarray(jax.jit(_labels, static_argnums=0)(build_model(self.config.model), variables, images))
        self.writer.add_image("val/predictions", prediction_image(images, labels, predicted,
                                                                  self.config.model.num_classes),
                              step, dataformats="HWC")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _records(path: str):
    """The payloads of a TFRecord file (length, masked CRC, data, masked CRC); a cut last record is skipped."""
    with open(path, "rb") as f:
        while header := f.read(12):
            if len(header) < 12:
                return
            (length,) = struct.unpack("<Q", header[:8])
            data = f.read(length)
            if len(data) < length or len(f.read(4)) < 4:
                return
            yield data


def read_events(logdir: str) -> list:
    """Every ``Event`` of the event files directly in ``logdir``, in file order."""
    from tensorboardX.proto import event_pb2

    events = []
    for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
        for data in _records(path):
            event = event_pb2.Event()
            event.ParseFromString(data)
            events.append(event)
    return events


def read_scalars(logdir: str) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value), ...]}`` of the scalars in ``logdir``'s event files, as TensorBoard shows
    them: a later file's purge step drops the earlier files' events from that step on."""
    out: dict[str, list[tuple[int, float]]] = {}
    for event in read_events(logdir):
        if event.HasField("session_log") and event.session_log.status == event.session_log.START:
            for tag in out:
                out[tag] = [(s, v) for s, v in out[tag] if s < event.step]
        for value in event.summary.value:
            if value.HasField("simple_value"):
                out.setdefault(value.tag, []).append((int(event.step), float(value.simple_value)))
    return out


def read_image_steps(logdir: str, tag: str = "val/predictions") -> list[int]:
    """The steps at which ``tag`` holds an image."""
    return [int(e.step) for e in read_events(logdir) for v in e.summary.value if v.tag == tag and v.HasField("image")]
