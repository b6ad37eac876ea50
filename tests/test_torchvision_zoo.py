"""Compaction on tricky torchvision architectures: channel shuffle and chunks (ShuffleNetV2),
LayerNorm over channels in channels-last blocks (ConvNeXt), squeeze-excitation (MobileNetV3,
EfficientNet), grouped convolutions (RegNet), concatenations (GoogLeNet, SqueezeNet).

Each gets 30% of every group's neurons killed and must compact without a crash, exactly, and
in a handful of forward passes. The whole zoo is ``benchmarks/torchvision_zoo.py``, whose
helpers this test uses.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import pytest

if importlib.util.find_spec("torchvision") is None:
    pytest.skip("torchvision is not installed (the `test` extra)", allow_module_level=True)

_spec = importlib.util.spec_from_file_location(
    "torchvision_zoo", Path(__file__).parents[1] / "benchmarks" / "torchvision_zoo.py")
zoo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(zoo)
zoo.load_torchvision()  # importable beside the CPU build of torch, see the benchmark

from compactcnn.surgery.outcome import KEPT_ACROSS, KEPT_COUPLED  # noqa: E402

# Small inputs keep the set within about a minute on two cores.
TRICKY = {"shufflenet_v2_x0_5": 32, "convnext_tiny": 32, "mobilenet_v3_small": 32,
          "efficientnet_b0": 32, "regnet_x_400mf": 32, "googlenet": 32, "squeezenet1_1": 48}


@pytest.mark.parametrize("name", sorted(TRICKY))
def test_a_tricky_torchvision_model_compacts_exactly(name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch-pruning on unwrapped parameters
        model, small, report, killed, side, _ = zoo.compacted(name, side=TRICKY[name])
    assert killed > 0
    assert zoo.relative_diff(model, small, side) <= 1e-5
    assert report.forward_passes <= 20
    removed = sum(g.removed for g in report.groups)
    assert removed > 0 and report.after.total_params < report.before.total_params
    for g in report.groups:  # every dead neuron is removed or kept with a reason
        assert g.removed + sum(n for r, n in g.kept.items() if r != KEPT_COUPLED) == g.dead
    if name == "convnext_tiny":
        # LayerNorm keeps the residual stream it normalises, not the expansion layers.
        across = {g.name for g in report.groups if g.kept[KEPT_ACROSS]}
        assert across and all(".block.0" in n or n.endswith((".0", ".1")) for n in across), \
            across
        expansions = [g for g in report.groups if g.name.endswith(".block.3")]
        assert expansions and all(g.removed == g.dead > 0 for g in expansions)


def test_swin_compacts_exactly_past_its_cycle_and_its_channel_last_merge():
    """torch-pruning 1.6 loops without end on Swin's relative-position bias (a reshape and an
    expand whose index lists grow eightfold a turn) and raises TypeError on its patch merging
    (a concatenation of channel-last slices). The adapter bounds the one and makes the other a
    dead end, so Swin compacts, exactly, the neurons that can be traced."""
    import torch
    from torchvision.models.swin_transformer import SwinTransformer

    from compactcnn.surgery import compact

    torch.manual_seed(0)
    model = SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[1, 1], num_heads=[1, 2],
                            window_size=[4, 4], num_classes=10).eval()
    zoo.randomize_norms(model, 0)
    example = torch.randn(2, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch-pruning on unwrapped parameters
        killed = zoo.kill(model, example, 0.3)
        small, report = compact(model, example)
    assert killed > 0 and sum(g.removed for g in report.groups) > 0
    assert report.after.total_params < report.before.total_params
    assert zoo.relative_diff(model, small, 32) <= 1e-5
