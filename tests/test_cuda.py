"""The CUDA path of training: skipped here, run on a GPU machine when one is lent."""

from __future__ import annotations

import pytest
import torch

from compactcnn.run.config import TrainConfig
from compactcnn.run.pipeline import run

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def test_training_on_cuda_kills_neurons_exactly_and_compacts(tmp_path) -> None:
    cfg = TrainConfig(model="vgg_small", data="synthetic", epochs=3, lam=0.03, lr=0.05)
    result = run(cfg, tmp_path / "run", device="cuda")
    assert result["compact"]["params"] < result["dense"]["params"]
    assert result["max_abs_output_diff"] <= 1e-5
    assert result["accuracy"] > 0.3


def test_full_groups_gather_and_report_on_cuda() -> None:
    from compactcnn import models
    from compactcnn.sparsity import neuron_groups

    model = models.create("lenet5").cuda()
    groups = neuron_groups(model, torch.randn(1, 1, 28, 28, device="cuda"), full=True)
    for g in groups:
        m = g.matrix()
        m[0] = 0
        g.write(m)
        assert bool(g.dead()[0]) and g.norms()[0].item() == 0.0
        assert g.norms().device.type == "cuda"
