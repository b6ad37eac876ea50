"""Datasets as in-memory tensors, and loaders whose order is a pure function of (seed, epoch).

Everything the experiments use is small enough to hold in memory, so every source ends up as
plain tensors in a ``TensorDataset``: nothing downloaded, nothing cached to disk. Fashion-MNIST
is read from Debian's ``dataset-fashion-mnist`` package (idx.py), anything else is a folder of
images (folders.py) or synthetic data (synthetic.py); splits.py normalises and splits,
loaders.py orders the batches.
"""

from compactcnn.data.folders import load_image_folder
from compactcnn.data.idx import FASHION_MNIST_DIR, load_fashion_mnist, read_idx
from compactcnn.data.loaders import epoch_loader, make_loader
from compactcnn.data.splits import Splits, load_dataset
from compactcnn.data.synthetic import synthetic

__all__ = ["FASHION_MNIST_DIR", "Splits", "epoch_loader", "load_dataset", "load_fashion_mnist",
           "load_image_folder", "make_loader", "read_idx", "synthetic"]
