"""tinygrad_bn: a small, exact autograd engine in numpy whose showcase is batch norm.

    import numpy as np, tinygrad_bn as tb
    x = tb.Node(np.random.randn(200, 50), name="x")
    out = tb.batchnorm_staged(x, tb.Node(np.ones(50)), tb.Node(np.zeros(50)))
    out.backward(np.random.randn(200, 50))      # x.grad, and every stage node's .grad
    print(tb.compare_batchnorm(x.data, np.ones(50), np.zeros(50)))

Layers (each imports only the ones below it): core (Node, ops) < norm, layers (the
assignment's other layers staged) < fast (faster variants at the seams core and norm
declare) < files (output files written whole) < check, train < cs231n, grading (a student's
own code judged) < viz < top (this package's __init__ and the command line).
"""

from . import (
                   cs231n,
                   fast,  # noqa: F401  (registers the fast variants of the core ops)
                   layers,
)
from .check.compare import NormReport, compare_batchnorm, compare_normalization
from .check.explain import explain
from .check.gradcheck import GradcheckResult, gradcheck, numerical_gradient, rel_error, scaled_error
from .core import ops
from .core.dual import unbroadcast, where
from .core.functional import (
                   add,
                   concatenate,
                   div,
                   exp,
                   identity,
                   index,
                   log,
                   matmul,
                   max,
                   maximum,
                   mean,
                   min,
                   minimum,
                   mul,
                   neg,
                   pad,
                   pow,
                   relu,
                   reshape,
                   sliding_window_view,
                   sqrt,
                   stack,
                   sub,
                   sum,
                   tanh,
                   transpose,
)
from .core.node import Constant, Node, enable_grad, grad, graph_nodes, is_grad_enabled, no_grad, stages
from .grading.layers import LayersReport, check_layers
from .norm import (
                   STAGE_NAMES,
                   batchnorm_fused,
                   batchnorm_staged,
                   groupnorm_fused,
                   groupnorm_staged,
                   layernorm_fused,
                   layernorm_staged,
                   norm_fused,
                   norm_staged,
                   spatial_batchnorm_fused,
                   spatial_batchnorm_staged,
)
from .train import loss, nn, optim
from .train.nn import BatchNorm, GroupNorm, LayerNorm, Linear, Module, ReLU, Sequential

__version__ = "0.1.0"

__all__ = [
    "Node", "Constant", "grad", "no_grad", "enable_grad", "is_grad_enabled", "graph_nodes", "stages",
    "ops", "fast", "nn", "loss", "optim", "cs231n", "layers",
    "add", "sub", "mul", "div", "pow", "neg", "identity", "sqrt", "exp", "log", "relu", "tanh", "sum",
    "mean", "reshape", "transpose", "matmul", "unbroadcast", "where",
    "index", "max", "min", "maximum", "minimum", "pad", "concatenate", "stack", "sliding_window_view",
    "batchnorm_staged", "batchnorm_fused", "STAGE_NAMES", "BatchNorm", "Module",
    "LayerNorm", "GroupNorm", "Linear", "ReLU", "Sequential",
    "layernorm_staged", "layernorm_fused", "spatial_batchnorm_staged", "spatial_batchnorm_fused",
    "groupnorm_staged", "groupnorm_fused", "norm_staged", "norm_fused",
    "numerical_gradient", "rel_error", "scaled_error", "gradcheck", "GradcheckResult",
    "compare_batchnorm", "compare_normalization", "NormReport", "check_layers", "LayersReport", "explain",
]
