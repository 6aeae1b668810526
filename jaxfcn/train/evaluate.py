"""``jaxfcn evaluate``: per-case, per-class Dice and HD95 of a trained run on whole volumes.

Every case of the split (whole preprocessed volumes on the canonical grid, from
:meth:`~jaxfcn.data.dataset.SegmentationDataset.cases`) is segmented with
:func:`jaxfcn.train.inference.predict_volume` (2D: slice by slice along each trained orientation, softmax
averaged; 3D: sliding window), then scored with
:func:`jaxfcn.train.metrics.case_metrics` in millimetres using the case's voxel spacing. The summary
(``WORKDIR/summary.json`` by default) follows nnU-Net's: ``metric_per_case``, per-class ``mean`` and
``foreground_mean``; NaN (class absent from both prediction and reference) is written as ``null``.
"""
from __future__ import annotations

import copy
import os
import sys
import time

from jaxfcn.errors import UserError


def evaluate_run(workdir: str, split: str = "test", data: str | None = None, step=None,
                 overlap: float | None = None, output: str | None = None, dataset=None,
                 progress: bool = True) -> dict:
    """Evaluate the run in ``workdir`` on ``split`` of its dataset (or of ``data``); writes and returns the summary.

    ``step``: None = latest/final params, an int, or ``"best"`` (best validation checkpoint).
    """
    from jaxfcn.files import write_json_atomic
    from jaxfcn.train import workdir as wd
    from jaxfcn.train.checkpoint import load_variables
    from jaxfcn.train.metrics import case_metrics, json_safe, summarize
    from jaxfcn.train.inference import DEFAULT_OVERLAP, make_probabilities_fn, predict_volume

    config = copy.deepcopy(wd.load_run_config(workdir))
    trained_on = wd.load_dataset_info(workdir)
    if data:
        config.data.task = data
    if dataset is None:
        from jaxfcn.data import open_dataset

        dataset = open_dataset(config.data, depth=config.model.depth, progress=progress)
    if dataset.info.num_classes != config.model.num_classes or dataset.info.in_channels != config.model.in_channels:
        raise UserError(f"--data {config.data.task}: {dataset.info.num_classes} classes / {dataset.info.in_channels} "
                        f"channels, but the model has {config.model.num_classes} / {config.model.in_channels}")
    cases = dataset.cases(split)
    if not cases:
        raise UserError(f"--split {split}: dataset '{dataset.info.name}' has no cases in that split")
    output = output or os.path.join(workdir, wd.EVAL_SUMMARY_FILE)
    variables, used_step = load_variables(workdir, step)

    from jaxfcn.models import build_model

    model = build_model(config.model)
    probabilities_fn = make_probabilities_fn(model)
    per_case = []
    start = time.perf_counter()
    for case in cases:
        pred = predict_volume(model, variables, case.image, config,
                              DEFAULT_OVERLAP if overlap is None else overlap, probabilities_fn)
        metrics = case_metrics(pred, case.label, dataset.info.class_names, case.spacing)
        per_case.append({"case_id": case.case_id, "metrics": metrics})
        if progress:
            print(f"{case.case_id}: mean Dice {metrics['mean']['Dice']:.4f}  HD95 {metrics['mean']['HD95']:.2f} mm",
                  file=sys.stderr)
    summary = {
        "workdir": os.path.abspath(workdir), "step": used_step, "split": split, "dataset": dataset.info.name,
        "trained_on": trained_on.name, "class_names": list(dataset.info.class_names),
        "spatial_dims": config.model.spatial_dims, "seconds": round(time.perf_counter() - start, 2),
        **summarize(per_case, dataset.info.class_names),
    }
    summary = json_safe(summary)
    write_json_atomic(output, summary)
    return summary
