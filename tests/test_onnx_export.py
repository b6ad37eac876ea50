"""ONNX export: the torch.export-based exporter by default, a verified TorchScript fallback, and
a file that misses the tolerance never written.

Each file written is run again here in ONNX Runtime on a batch the export never saw, so a
passing test does not rest on the difference the exporter reports about itself.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")

from compactcnn import models  # noqa: E402
from compactcnn.cli import main  # noqa: E402
from compactcnn.deploy.onnx import (  # noqa: E402
    DEFAULT_TOLERANCE,
    DYNAMO,
    INPUT,
    ONNX_EXPORTERS,
    TORCHSCRIPT,
    export_onnx,
)
from compactcnn.errors import CompactCNNError  # noqa: E402
from compactcnn.layers import Factorised  # noqa: E402
from compactcnn.surgery.factorise import factorise  # noqa: E402
from tests.fixtures_models import tiny_cnn  # noqa: E402

TINY = (1, 12, 12)  # tiny_cnn's input


def factorised_lenet() -> nn.Module:
    """LeNet-5 whose fc3 has rank 6, factorised into two thinner layers."""
    model = models.create("lenet5", input_size=16).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        model.fc3.weight.copy_(torch.randn(500, 6, generator=g) @ torch.randn(6, 50, generator=g)
                               / 50)
    small, _ = factorise(model, (1, 16, 16))
    assert isinstance(small.fc3, Factorised)
    return small


def zoo(name: str) -> tuple[nn.Module, tuple[int, int, int]]:
    if name == "factorised lenet5":
        return factorised_lenet(), (1, 16, 16)
    d = models.defaults(name)
    return models.create(name).eval(), (d["in_channels"], d["input_size"], d["input_size"])


def rerun(path: Path, model: nn.Module, shape: tuple[int, ...], batch: int = 5) -> float:
    """max |onnxruntime - torch| of the file at ``path`` on a fresh batch."""
    x = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(11))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        want = model.eval()(x)
    return float((torch.from_numpy(session.run(None, {INPUT: x.numpy()})[0]) - want).abs().max())


@pytest.mark.parametrize("name", ["lenet5", "vgg_small", "resnet20", "factorised lenet5"])
def test_the_torch_export_based_exporter_writes_zoo_models_within_tolerance(name, tmp_path):
    model, shape = zoo(name)
    path = tmp_path / "model.onnx"
    result = export_onnx(model, shape, path)
    assert result.exporter == DYNAMO and result.passed_over == ""
    assert result.max_abs_diff <= result.tolerance == DEFAULT_TOLERANCE
    graph = onnx.load(str(path)).graph
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert rerun(path, model, shape) <= DEFAULT_TOLERANCE
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"], "no temporary left behind"


class DataDependentBranch(nn.Module):
    """An ``if`` on a tensor's value: torch.export cannot capture it, a trace can (this branch
    is taken for every input, so the traced graph is right)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        if x.abs().sum() >= 0:
            return self.fc(x)
        return -self.fc(x)


def test_a_model_torch_export_cannot_capture_falls_back_to_a_verified_torchscript_export(
        tmp_path):
    model = DataDependentBranch()
    path = tmp_path / "branch.onnx"
    with pytest.warns(torch.jit.TracerWarning):  # the trace's own warning is kept
        result = export_onnx(model, (4,), path)
    assert result.exporter == TORCHSCRIPT
    assert result.passed_over.startswith("dynamo exporter failed (TorchExportError: ")
    assert "data-dependent" in result.passed_over and "\x1b" not in result.passed_over
    assert rerun(path, model, (4,)) <= DEFAULT_TOLERANCE


def test_a_dynamo_export_that_misses_the_tolerance_falls_back(tmp_path, monkeypatch):
    def off_by_a_hundredth(model: nn.Module, x: Tensor, opset: int) -> bytes:
        wrong = tiny_cnn().eval()
        wrong.load_state_dict(model.state_dict())
        with torch.no_grad():
            wrong[-1].bias += 0.01
        return ONNX_EXPORTERS[TORCHSCRIPT](wrong, x, opset)

    monkeypatch.setitem(ONNX_EXPORTERS, DYNAMO, off_by_a_hundredth)
    model = tiny_cnn().eval()
    result = export_onnx(model, TINY, tmp_path / "m.onnx")
    assert result.exporter == TORCHSCRIPT
    assert "dynamo export differs from PyTorch by 0.01 > tolerance 0.0001" in result.passed_over
    assert rerun(tmp_path / "m.onnx", model, TINY) <= DEFAULT_TOLERANCE


def runtime_adding(monkeypatch: pytest.MonkeyPatch, offset: float) -> None:
    """Make every ONNX Runtime session return its outputs plus ``offset``."""

    class Off(onnxruntime.InferenceSession):
        def run(self, *args, **kwargs):
            return [out + offset for out in super().run(*args, **kwargs)]

    monkeypatch.setattr(onnxruntime, "InferenceSession", Off)


@pytest.mark.parametrize("offset, shown", [(1e-3, "0.001"), (float("nan"), "inf")])
@pytest.mark.parametrize("existing", [None, b"an earlier export"])
def test_a_miss_raises_and_writes_nothing(tmp_path, monkeypatch, offset, shown, existing):
    path = tmp_path / "m.onnx"
    if existing is not None:
        path.write_bytes(existing)
    runtime_adding(monkeypatch, offset)
    with pytest.raises(CompactCNNError) as caught:
        export_onnx(tiny_cnn(), TINY, path)
    message = str(caught.value)
    assert "\n" not in message and f"{path} not written" in message
    for name in (DYNAMO, TORCHSCRIPT):  # a NaN is a miss, not a pass
        assert f"{name} export differs from PyTorch by {shown} > tolerance 0.0001" in message
    if existing is None:
        assert not any(tmp_path.iterdir())
    else:
        assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]
        assert path.read_bytes() == existing


def test_the_tolerance_is_a_keyword_and_is_held_to(tmp_path):
    model = tiny_cnn().eval()
    loose = export_onnx(model, TINY, tmp_path / "a.onnx", tolerance=1.0)
    assert loose.tolerance == 1.0 and loose.exporter == DYNAMO
    with pytest.raises(CompactCNNError, match="must be a number >= 0, got -1"):
        export_onnx(model, TINY, tmp_path / "b.onnx", tolerance=-1)
    assert not (tmp_path / "b.onnx").exists()


class OneBatchSize(nn.Module):
    """Reshapes to the example's batch size, so takes no other."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(12, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x.reshape(4, -1))


def test_a_model_that_takes_only_its_example_batch_size_is_refused(tmp_path):
    refused = r"fails on input \[7, 3, 4\]: RuntimeError: .*batch axis is dynamic"
    with pytest.raises(CompactCNNError, match=refused):
        export_onnx(OneBatchSize(), (3, 4), tmp_path / "m.onnx")
    assert not any(tmp_path.iterdir())


class PythonIntBatch(nn.Module):
    """Takes any batch in PyTorch, but its batch size passes through a Python int, which both
    exporters turn into a constant: a graph that takes only the example's batch size."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(12, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x.reshape(int(x.shape[0]), -1))


def test_a_graph_that_bakes_the_batch_size_in_is_refused(tmp_path):
    with pytest.raises(CompactCNNError) as caught, pytest.warns(torch.jit.TracerWarning):
        export_onnx(PythonIntBatch(), (3, 4), tmp_path / "m.onnx")
    for name in (DYNAMO, TORCHSCRIPT):
        assert f"{name} export does not run in ONNX Runtime" in str(caught.value)
    assert not any(tmp_path.iterdir())


def test_without_the_extra_the_error_names_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import fails
    with pytest.raises(CompactCNNError, match=r"compactcnn\[onnx\]"):
        export_onnx(tiny_cnn(), TINY, tmp_path / "m.onnx")


def test_the_cli_refuses_a_miss_in_one_line_and_keeps_the_old_file(tmp_path, monkeypatch,
                                                                   capsys):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"an earlier export")
    runtime_adding(monkeypatch, 1e-3)
    assert main(["export", "tests.fixtures_models:tiny_cnn", "--input", "1,12,12",
                 "--onnx", str(out), "--force"]) == 2
    stdout, err = capsys.readouterr()
    assert stdout == "" and err.count("\n") == 1 and err.startswith("compactcnn: error: ")
    assert "> tolerance 0.0001" in err and "Traceback" not in err
    assert out.read_bytes() == b"an earlier export"
