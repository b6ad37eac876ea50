"""compactcnn: learn compact CNNs by proximal group sparsity on neurons (Zhou et al., ECCV 2016)."""

from compactcnn.errors import CompactCNNError

__version__ = "0.1.0"
__all__ = ["CompactCNNError", "__version__"]
