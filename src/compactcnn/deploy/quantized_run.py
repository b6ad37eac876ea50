"""A compact model at lower precision, and what that costs and buys: what ``compactcnn quantize``
and ``compactcnn binarize`` run.

Each step writes the deployed file and measures it against the float compact model on the same
test slice, the same way: accuracy and agreement of predictions, parameter bytes at the
deployed precision layer by layer (:mod:`compactcnn.deploy.footprint`), and CPU latency.
int8 is compared with the float model in the same runtime (ONNX Runtime), so the time saved is
the precision's. A binary model is compared with the float model in torch: with binary inputs
its binary layers run in the bit-packed NumPy kernels (XNOR and popcount); with real inputs
they cannot be bit-packed and run in torch, on the signs of their latent weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from compactcnn.accounting import neuron_table
from compactcnn.data.loaders import epoch_loader
from compactcnn.deploy.binary import PackedBinaryModel, binarize_model, binary_layers
from compactcnn.deploy.binaryfile import save_binary
from compactcnn.deploy.footprint import FLOAT_BYTES, footprint
from compactcnn.deploy.int8 import quantize_int8
from compactcnn.deploy.measure import OnnxModel, accuracy, latencies, predictions
from compactcnn.deploy.source import Deployable
from compactcnn.errors import CompactCNNError
from compactcnn.run.loop import run_epoch
from compactcnn.run.optimizers import batches_per_epoch, schedule

DEFAULT_CALIBRATION = 512
# Adam at a tenth of its usual 1e-3, without weight decay; see binarize_run for why.
DEFAULT_BINARY_LR = 1e-4


def quantize_run(src: Deployable, out: Path, calibration: int = DEFAULT_CALIBRATION,
                 reduce_range: bool = True) -> dict[str, Any]:
    """Quantise ``src.model`` to static int8 ONNX at ``out``, calibrated on the first
    ``calibration`` training images (never test images: they would flatter the result);
    ``reduce_range`` keeps weights to 7 bits (see :mod:`compactcnn.deploy.int8`)."""
    if calibration < 1:
        raise CompactCNNError(f"--calibration must be >= 1, got {calibration}")
    images = src.splits.train.tensors[0][:calibration]
    test_x, test_y = src.splits.test.tensors
    int8 = quantize_int8(src.model, images, src.shape, out, reduce_range=reduce_range)
    float_onnx = OnnxModel(int8["float_onnx"])
    int8_onnx = OnnxModel(out.read_bytes())
    want, got = predictions(src.model, test_x), predictions(int8_onnx, test_x)
    table = neuron_table(src.model, src.shape, src.name)
    deployed = footprint(table, {}, default="int8")
    return {
        "model": src.name, "source": str(src.model_file), "out": str(out), "precision": "int8",
        "calibration_images": len(images), "reduce_range": reduce_range,
        "test_images": len(test_y),
        "accuracy": {"float": accuracy(want, test_y), "int8": accuracy(got, test_y)},
        "agreement": accuracy(got, want),
        "max_logit_diff_on_calibration": int8["max_logit_diff"],
        "file_bytes": {"float_onnx": int8["float_bytes"], "int8_onnx": int8["bytes"]},
        "param_bytes": {"float32": table.total_params * FLOAT_BYTES,
                        "int8": deployed["params_bytes"]},
        "latency_ms": {"float_onnx": latencies(float_onnx, src.shape),
                       "int8_onnx": latencies(int8_onnx, src.shape)},
        "footprint": deployed,
    }


def binarize_run(src: Deployable, out: Path, epochs: int, binary_activations: bool = False,
                 lr: float = DEFAULT_BINARY_LR) -> dict[str, Any]:
    """Binarise the weights of every layer but the first and last (XNOR-Net), fine-tune for
    ``epochs`` on the training images, save to ``out`` and measure it as deployed
    (:class:`compactcnn.deploy.binary.PackedBinaryModel`).

    Adam, not SGD: a latent weight matters only when its sign flips, and the straight-through
    gradients of binary layers have scales unrelated to their weights' (which come from the
    float training), so one SGD rate would flip a layer's signs all at once or never; Adam's
    per-weight normalised step ties the rate of flips to the learning rate rather than to each
    layer's gradient scale (BinaryNet and XNOR-Net train with Adam too). The rate is small
    (1e-4) because training starts from trained weights, which large steps would scramble, and
    there is no weight decay, which pulls latent weights to zero, where their signs flip on
    noise.
    """
    if epochs < 0:
        raise CompactCNNError(f"--epochs must be >= 0, got {epochs}")
    if not 0 < lr < float("inf"):
        raise CompactCNNError(f"--lr must be a positive number, got {lr}")
    torch.manual_seed(src.seed)
    train_x = src.splits.train.tensors[0]
    binary = binarize_model(src.model, train_x[:2], binary_activations=binary_activations)
    layers = binary_layers(binary)
    if not layers:
        raise CompactCNNError(f"{src.name} has no layer between its first and last that the "
                              "packed kernels can run; nothing to binarise")
    history = _finetune(binary, src, epochs, lr)
    binary.eval()
    save_binary(binary, out)
    packed = PackedBinaryModel(binary)
    test_x, test_y = src.splits.test.tensors
    want, got = predictions(src.model, test_x), predictions(packed, test_x)
    with torch.no_grad():
        diff = float((packed(test_x[:64]) - binary(test_x[:64])).abs().max())
    table = neuron_table(src.model, src.shape, src.name)
    deployed = footprint(table, dict.fromkeys(layers, "binary"))
    return {
        "model": src.name, "source": str(src.model_file), "out": str(out),
        "precision": "binary", "binary_layers": layers, "binary_activations": binary_activations,
        "epochs": epochs, "optimizer": {"name": "adam", "lr": lr, "weight_decay": 0.0},
        "history": history, "test_images": len(test_y),
        "accuracy": {"float": accuracy(want, test_y), "binary": accuracy(got, test_y)},
        "agreement": accuracy(got, want),
        "max_abs_diff_packed_vs_torch": diff,
        "param_bytes": {"float32": table.total_params * FLOAT_BYTES,
                        "binary": deployed["params_bytes"]},
        "binary_runtime": "bit-packed NumPy" if binary_activations else "torch",
        "latency_ms": {"float_torch": latencies(src.model, src.shape),
                       "binary": latencies(packed, src.shape)},
        "footprint": deployed,
    }


def _finetune(model: nn.Module, src: Deployable, epochs: int, lr: float) -> list[dict]:
    """Train all of ``model`` (its float layers too) on the run's batches, cosine-decayed lr."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    scheduler = schedule(optimizer, epochs * batches_per_epoch(src.splits.train, src.batch_size))
    history = []
    for e in range(epochs):
        loader = epoch_loader(src.splits.train, src.batch_size, src.seed, e)
        loss, acc = run_epoch(model, optimizer, scheduler, loader, f"binary {e + 1}/{epochs}")
        history.append({"epoch": e + 1, "loss": loss, "accuracy": acc})
    return history
