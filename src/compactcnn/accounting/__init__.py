"""What was won, layer by layer: the neuron table (the paper's Table 1), the cascade of a
removal, FLOPs and measured latency."""

from compactcnn.accounting.cascade import cascade, parse_removals
from compactcnn.accounting.flops import flops
from compactcnn.accounting.latency import latency_ms
from compactcnn.accounting.table import DTYPE_BYTES, LayerRow, NeuronTable
from compactcnn.accounting.text import format_table
from compactcnn.accounting.trace import neuron_table

__all__ = ["DTYPE_BYTES", "LayerRow", "NeuronTable", "cascade", "flops", "format_table",
           "latency_ms", "neuron_table", "parse_removals"]
