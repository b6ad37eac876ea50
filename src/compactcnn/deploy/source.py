"""What a deployment step starts from: the compact model and the data that calibrates, fine-tunes
and tests it.

A run folder knows both: its compact model (``model.safetensors``) and, in its report, the
data it was trained on, split the same way again (same limit, seed and validation share), so
that calibration and fine-tuning see training images only and the test slice is the run's
own. A bare model file knows no data, so the caller has to name it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from compactcnn.data.splits import Splits, load_dataset
from compactcnn.errors import CompactCNNError
from compactcnn.files import modelfile
from compactcnn.run import report
from compactcnn.run.config import TrainConfig
from compactcnn.run.rundir import MODEL, run_file


@dataclass(frozen=True)
class Deployable:
    """A compact float model in eval mode on the CPU, with its data and training settings."""

    model: nn.Module
    shape: tuple[int, int, int]
    splits: Splits
    name: str
    model_file: Path
    batch_size: int
    seed: int


def load_deployable(source: str | Path, data: str | None = None, data_dir: str | None = None,
                    limit: int | None = None, test_limit: int | None = None) -> Deployable:
    """The model of a run folder or model file, and its data.

    For a run folder the data are the run's unless ``data`` names others; ``limit`` and
    ``test_limit`` cap the training pool and the test set (default: the run's own caps).
    """
    path = Path(source)
    settings = report.read(path) if path.is_dir() else {}
    model_file = run_file(path, MODEL) if path.is_dir() else path
    model = modelfile.load(model_file).cpu().eval()
    spec = modelfile.spec_of(model)
    shape = modelfile.input_shape(spec)
    with torch.no_grad():  # an import path's spec may not record its classes: its outputs do
        classes = model(torch.zeros(1, *shape)).shape[1]
    if data is None and not settings:
        raise CompactCNNError(f"{path} is a model file, not a run folder, so it names no data "
                              "to calibrate, fine-tune and test on: add --data fashion-mnist, "
                              "synthetic or folder:PATH")
    defaults = TrainConfig()
    if data is None:
        data, data_dir = settings["data"], data_dir or settings.get("data_dir")
    splits = load_dataset(data, data_dir=Path(data_dir) if data_dir else None,
                          val_fraction=settings.get("val_fraction", defaults.val_fraction),
                          limit=settings.get("limit") if limit is None else limit,
                          test_limit=settings.get("test_limit") if test_limit is None
                          else test_limit,
                          seed=settings.get("seed", defaults.seed),
                          input_size=shape[1] if shape[1] == shape[2] else None)
    if splits.input_shape != shape or splits.num_classes != classes:
        raise CompactCNNError(
            f"{model_file.name} takes {list(shape)} inputs in {classes} classes; "
            f"{data} has {list(splits.input_shape)} in {splits.num_classes}")
    return Deployable(model, shape, splits, spec.get("name") or spec["import"], model_file,
                      settings.get("batch_size", defaults.batch_size),
                      settings.get("seed", defaults.seed))
