"""Static int8 quantisation through ONNX Runtime: same predictions, smaller file, safe writes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

pytest.importorskip("onnxruntime")

from compactcnn.deploy.int8 import int8_session, predict_int8, quantize_int8  # noqa: E402

SHAPE = (1, 28, 28)


def images(n: int, seed: int) -> tuple[Tensor, Tensor]:
    """Ten fixed noisy templates: a task a tiny net learns in a few steps."""
    g = torch.Generator().manual_seed(seed)
    templates = torch.randn(10, *SHAPE, generator=torch.Generator().manual_seed(99))
    labels = torch.randint(0, 10, (n,), generator=g)
    return templates[labels] + 0.8 * torch.randn(n, *SHAPE, generator=g), labels


@pytest.fixture(scope="module")
def trained() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(8 * 13 * 13, 10))
    x, y = images(256, seed=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(20):
        batch = slice(64 * (step % 4), 64 * (step % 4 + 1))
        loss = F.cross_entropy(model(x[batch]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model


@pytest.fixture(scope="module")
def quantised(trained: nn.Module, tmp_path_factory: pytest.TempPathFactory
              ) -> tuple[Path, dict]:
    path = tmp_path_factory.mktemp("int8") / "model.int8.onnx"
    calibration, _ = images(128, seed=2)
    return path, quantize_int8(trained, calibration, SHAPE, path)


def test_int8_predictions_agree_with_float(trained: nn.Module, quantised: tuple[Path, dict]
                                          ) -> None:
    path, _ = quantised
    held_out, _ = images(512, seed=3)
    with torch.no_grad():
        want = trained.eval()(held_out).argmax(1)
    got = predict_int8(path, held_out).argmax(1)
    assert (got == want).float().mean() >= 0.98


def test_int8_file_is_smaller_and_reported(trained: nn.Module, quantised: tuple[Path, dict]
                                          ) -> None:
    path, report = quantised
    assert report["bytes"] == path.stat().st_size
    assert report["bytes"] < report["float_bytes"] == len(report["float_onnx"])
    with torch.no_grad():
        largest = trained.eval()(images(128, seed=2)[0]).abs().max()
    assert 0 < report["max_logit_diff"] < 0.05 * largest  # int8 error: a few percent at most
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left behind


def test_int8_graph_holds_int8_weights(quantised: tuple[Path, dict]) -> None:
    onnx = pytest.importorskip("onnx")
    graph = onnx.load(str(quantised[0])).graph
    assert any(node.op_type == "DequantizeLinear" for node in graph.node)
    int8 = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert sum(len(t.raw_data) for t in int8) >= 8 * 9 + 8 * 13 * 13 * 10  # every weight


def test_a_session_is_reusable_and_takes_any_batch(quantised: tuple[Path, dict]) -> None:
    path, _ = quantised
    session = int8_session(path)
    x, _ = images(5, seed=4)
    torch.testing.assert_close(predict_int8(session, x), predict_int8(path, x))
    assert predict_int8(session, x[:1]).shape == (1, 10)


def test_quantising_keeps_the_callers_training_mode(trained: nn.Module, tmp_path: Path) -> None:
    trained.train()
    quantize_int8(trained, images(16, seed=5)[0], SHAPE, tmp_path / "m.onnx")
    assert trained.training


def test_calibration_of_the_wrong_shape_is_refused(trained: nn.Module, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="expected"):
        quantize_int8(trained, torch.randn(4, 3, 28, 28), SHAPE, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("batch", [1, 5])
def test_the_float_onnx_it_returns_is_the_model_at_any_batch(trained: nn.Module, batch: int,
                                                             quantised: tuple[Path, dict]) -> None:
    """quantize reuses this file for its float rows instead of exporting the model again."""
    x, _ = images(batch, seed=4)
    with torch.no_grad():
        want = trained.eval()(x)
    torch.testing.assert_close(predict_int8(int8_session(quantised[1]["float_onnx"]), x), want,
                               rtol=0, atol=1e-4)
