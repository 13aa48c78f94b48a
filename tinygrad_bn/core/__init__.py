"""The textbook core: `node.py` (Node, the backward pass, no_grad) and `ops.py` (primitives).

`functional.py` records the ops (Node's operators call it: the core's one import pair);
`dual.py` holds what VJPs are written with, numpy on arrays and recording on Nodes.

Nothing here knows that a faster layer exists; `tinygrad_bn.fast` registers itself on top.
"""

from .node import Constant, Node, as_float_array, enable_grad, graph_nodes, is_grad_enabled, no_grad, stages

__all__ = ["Node", "Constant", "as_float_array", "no_grad", "enable_grad", "is_grad_enabled",
           "graph_nodes", "stages"]
