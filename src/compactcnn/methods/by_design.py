"""Compact by design, in the same harness: the compact network is built at the budget instead of
found by removing neurons, then trained from scratch for all the epochs, like the controls.

``filtermap``: the 3D-FilterMap variant of the run's model (``lenet5`` -> ``lenet5_filtermap``,
``vgg_small`` -> ``vgg_small_filtermap``), its maps sized so that the parameters it stores and
learns (the maps, plus the layers it keeps plain) are the budget's share of the dense model's.
Counted after materialisation it would always be the dense model's size, which is what it
computes but not what it stores. ``gray_hist``: Zheng et al.'s grayscale CNN plus fixed colour
histogram (``models/gray_hist.py``), its widths sized to the budget; for colour data only.

Only a parameter budget applies: a filter map computes every filter of the dense layer (the
dense model's FLOPs), and gray_hist's FLOPs follow from the widths its parameters choose. The
network is designed when the run is set up (``run/budgeted.py``), so a budget that cannot be met
or data that do not fit are refused before any training; the harness then uses it in place of
the compaction of the dense model.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from compactcnn import models
from compactcnn.accounting.flops import flops
from compactcnn.accounting.trace import neuron_table
from compactcnn.data.splits import Splits
from compactcnn.errors import CompactCNNError
from compactcnn.inputs import shape_of
from compactcnn.methods.base import Context, Method
from compactcnn.methods.selection import Masks
from compactcnn.models.gray_hist import widths_for
from compactcnn.surgery.outcome import CompactionReport

# Where the harness keeps the designed network in the method's context (rebuilt on resume).
DESIGNED = "designed"


class ByDesign(Method):
    """A method whose compact network is designed at the budget; it selects no neurons."""

    from_scratch = True

    def design(self, ctx: Context, model_name: str, seed: int, splits: Splits) -> nn.Module:
        """The compact network for the budget, freshly initialised under ``seed``."""
        budget = ctx.budget
        if budget.flops is not None or budget.params is None:
            raise CompactCNNError(f"{self.name} is sized by its parameters: give the target as "
                                  "params=F only")
        with torch.random.fork_rng():  # the run's own random stream is left as it was
            torch.manual_seed(seed)
            return self._build(ctx, model_name, splits)

    def _build(self, ctx: Context, model_name: str, splits: Splits) -> nn.Module:
        raise NotImplementedError

    def select(self, ctx: Context) -> Masks:
        raise CompactCNNError(f"{self.name} designs its network; it selects no neurons")


def _zoo_name(model: nn.Module) -> str | None:
    return getattr(model, "compactcnn_spec", {}).get("name")


class FilterMapDesign(ByDesign):
    name = "filtermap"

    def check(self, model: nn.Module) -> None:
        name = _zoo_name(model)
        if name is None or f"{name}_filtermap" not in models.names():
            have = ", ".join(n.removesuffix("_filtermap") for n in models.names()
                             if n.endswith("_filtermap"))
            raise CompactCNNError(f"filtermap does not apply to this model: the zoo has no "
                                  f"filter-map variant of {name or 'it'} (it has one of: {have})")

    def _build(self, ctx: Context, model_name: str, splits: Splits) -> nn.Module:
        c, h, _ = splits.input_shape
        return models.create(f"{model_name}_filtermap", num_classes=splits.num_classes,
                             in_channels=c, input_size=h, fraction=ctx.budget.params)


class GrayHistDesign(ByDesign):
    name = "gray_hist"

    def _build(self, ctx: Context, model_name: str, splits: Splits) -> nn.Module:
        c, h, _ = splits.input_shape
        if c != 3:
            raise CompactCNNError(f"gray_hist does not apply to {splits.name}: it needs colour "
                                  f"images (3 channels), these have {c}")
        target = math.floor(ctx.budget.params * ctx.cost.dense["params"])
        widths = widths_for(target, splits.num_classes)
        return models.create("gray_hist", num_classes=splits.num_classes, in_channels=c,
                             input_size=h, normalisation=(splits.mean, splits.std),
                             widths=list(widths))


class DesignReport(CompactionReport):
    """The dense model against the designed one, in the shape of a compaction report.

    Nothing was compacted, so there are no groups, and no output difference to report (NaN):
    the designed network was never meant to compute the dense one's function. Its layers are
    its own, with the width of the dense layer of the same name before (0 where there is none).
    """

    def layers(self) -> list[dict]:
        before = {r.name: r.output for r in self.before.layers}
        return [{"name": r.name, "neurons_before": before.get(r.name, 0),
                 "neurons_after": r.output} for r in self.after.layers if r.kind != "other"]


def design_report(dense: nn.Module, designed: nn.Module, example: torch.Tensor) -> DesignReport:
    shape = shape_of(example)
    return DesignReport(neuron_table(dense, shape), neuron_table(designed, shape),
                        flops(dense, shape), flops(designed, shape), [], math.nan)
