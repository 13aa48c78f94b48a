"""Drop-in replacements for the CS231n assignment-2 normalization functions.

    from tinygrad_bn.cs231n import batchnorm_forward, batchnorm_backward, batchnorm_backward_alt

Same signatures and parameter dicts as the assignment's `layers.py`: numpy arrays in
and out. Every `*_backward` runs the backward pass of the staged graph (one node per
step of the computational-graph diagram); `batchnorm_backward_alt` the closed form.
Also: layernorm_forward/backward, spatial_batchnorm_forward/backward and
spatial_groupnorm_forward/backward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .core.node import Node, as_float_array, stages
from .norm import (
    NormSpec,
    batchnorm_spec,
    closed_form_backward,
    groupnorm_spec,
    layernorm_spec,
    spatial_batchnorm_spec,
    staged_nodes,
)
from .train.nn import check_momentum

__all__ = [
    "batchnorm_forward", "batchnorm_backward", "batchnorm_backward_alt",
    "layernorm_forward", "layernorm_backward",
    "spatial_batchnorm_forward", "spatial_batchnorm_backward",
    "spatial_groupnorm_forward", "spatial_groupnorm_backward", "NormCache",
]

MODES = ("train", "test")


@dataclass
class NormCache:
    """What the backward functions need: the staged graph, its spec and batch statistics."""

    x: Node
    gamma: Node
    beta: Node
    out: Node
    spec: NormSpec
    mean: np.ndarray
    var: np.ndarray

    @property
    def stages(self) -> dict[str, Node]:
        """The staged graph's nodes by name (mu, xmu, ..., out), gradients included."""
        return stages(self.out)


def _check_mode(mode: Any) -> str:
    if mode not in MODES:
        raise ValueError(f"bn_param['mode']: expected 'train' or 'test', got {mode!r}")
    return mode


def _running_stat(bn_param: dict, key: str, features: int, dtype: np.dtype) -> np.ndarray:
    value = bn_param.get(key)
    if value is None:
        return np.zeros(features, dtype=dtype)
    value = as_float_array(value, f"bn_param[{key!r}]")
    if value.shape != (features,):
        raise ValueError(f"bn_param[{key!r}]: expected shape ({features},), got {value.shape}")
    return value


def batchnorm_forward(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
                      bn_param: dict) -> tuple[np.ndarray, NormCache | None]:
    """Batch norm forward. x: (N, D); gamma, beta: (D,). Returns (out (N, D), cache).

    bn_param: "mode" ('train' or 'test', required), "eps" (1e-5), "momentum" (0.9, the
    weight of the old running value), "running_mean"/"running_var" (D,) (zeros of x's
    dtype when absent; updated in train mode and written back into bn_param). cache is
    None in test mode.
    """
    return _batchnorm_forward(x, gamma, beta, bn_param, spatial=False)


def spatial_batchnorm_forward(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
                              bn_param: dict) -> tuple[np.ndarray, NormCache | None]:
    """Spatial batch norm. x: (N, C, H, W); gamma, beta: (C,); bn_param as batchnorm_forward."""
    return _batchnorm_forward(x, gamma, beta, bn_param, spatial=True)


def _batchnorm_forward(x: Any, gamma: Any, beta: Any, bn_param: dict,
                       spatial: bool) -> tuple[np.ndarray, NormCache | None]:
    # Every check runs before bn_param is touched: a rejected call changes nothing.
    mode = _check_mode(bn_param.get("mode"))
    eps = bn_param.get("eps", 1e-5)
    momentum = check_momentum(bn_param.get("momentum", 0.9))
    x = as_float_array(x, "x")
    if spatial:
        spec = spatial_batchnorm_spec(x.shape, eps)
    else:
        if x.ndim != 2:
            raise ValueError(f"x: expected shape (N, D), got {x.shape}")
        spec = batchnorm_spec(x.shape, 0, eps)
    features = x.shape[1]
    gamma_node = Node(as_float_array(gamma, "gamma"), name="gamma")
    beta_node = Node(as_float_array(beta, "beta"), name="beta")
    spec.check_params(gamma_node, beta_node)
    running_mean = _running_stat(bn_param, "running_mean", features, x.dtype)
    running_var = _running_stat(bn_param, "running_var", features, x.dtype)

    cache = None
    if mode == "train":
        cache = _staged_cache(Node(x.copy(), name="x"), gamma_node, beta_node, spec)
        out = cache.out.data
        batch_mean = cache.mean.reshape(features)
        batch_var = cache.var.reshape(features)
        running_mean = momentum * running_mean + (1 - momentum) * batch_mean
        running_var = momentum * running_var + (1 - momentum) * batch_var
    else:
        shape = spec.param_bshape
        xhat = (x - running_mean.reshape(shape)) / np.sqrt(running_var.reshape(shape) + spec.eps)
        out = gamma_node.data.reshape(shape) * xhat + beta_node.data.reshape(shape)
    bn_param["running_mean"] = running_mean
    bn_param["running_var"] = running_var
    return out, cache


def layernorm_forward(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
                      ln_param: dict) -> tuple[np.ndarray, NormCache]:
    """Layer norm forward. x: (N, D); gamma, beta: (D,); ln_param: {"eps": 1e-5}."""
    x = as_float_array(x, "x")
    if x.ndim != 2:
        raise ValueError(f"x: expected shape (N, D), got {x.shape}")
    spec = layernorm_spec(x.shape, ln_param.get("eps", 1e-5))
    cache = _staged_cache(Node(x.copy(), name="x"), Node(as_float_array(gamma, "gamma"), name="gamma"),
                          Node(as_float_array(beta, "beta"), name="beta"), spec)
    return cache.out.data, cache


def spatial_groupnorm_forward(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, G: int,  # noqa: N803
                              gn_param: dict) -> tuple[np.ndarray, NormCache]:
    """Group norm forward. x: (N, C, H, W); gamma, beta: (1, C, 1, 1) (or (C,)); C % G == 0;
    gn_param: {"eps": 1e-5}."""
    x = as_float_array(x, "x")
    spec = groupnorm_spec(x.shape, G, gn_param.get("eps", 1e-5), argname="G")  # the assignment's name
    cache = _staged_cache(Node(x.copy(), name="x"), Node(as_float_array(gamma, "gamma"), name="gamma"),
                          Node(as_float_array(beta, "beta"), name="beta"), spec)
    return cache.out.data, cache


def _staged_cache(x: Node, gamma: Node, beta: Node, spec: NormSpec) -> NormCache:
    spec.check_params(gamma, beta)
    nodes = staged_nodes(x, gamma, beta, spec)
    return NormCache(x=x, gamma=gamma, beta=beta, out=nodes["out"], spec=spec,
                     mean=nodes["mu"].data, var=nodes["var"].data)


def _check_dout(dout: Any, cache: Any) -> np.ndarray:
    if not isinstance(cache, NormCache):
        raise TypeError(
            f"cache: expected the cache returned by the matching forward function "
            f"(batch norm: in train mode), "
            f"got {type(cache).__name__}"
        )
    dout = as_float_array(dout, "dout")
    if dout.shape != cache.x.shape:
        raise ValueError(f"dout: expected shape {cache.x.shape} (x's), got {dout.shape}")
    return dout.astype(cache.x.dtype, copy=False)


def batchnorm_backward(dout: np.ndarray, cache: NormCache
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Backward through the staged graph. dout: x's shape. Returns dx, dgamma, dbeta
    (dgamma and dbeta of gamma's and beta's shapes)."""
    dout = _check_dout(dout, cache)
    # Fresh gradients on every call: the same cache may be backpropagated more than once.
    cache.out.zero_grad()
    cache.out.backward(dout)
    return cache.x.grad.copy(), cache.gamma.grad.copy(), cache.beta.grad.copy()


def batchnorm_backward_alt(dout: np.ndarray, cache: NormCache
                           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Backward by the closed form (the fused op's VJP). Same shapes as batchnorm_backward."""
    dout = _check_dout(dout, cache)
    return closed_form_backward(dout, cache.x.data, cache.gamma.data, cache.spec)


def layernorm_backward(dout: np.ndarray, cache: NormCache
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Layer norm backward through the staged graph. dout: (N, D) -> dx, dgamma, dbeta."""
    return batchnorm_backward(dout, cache)


def spatial_batchnorm_backward(dout: np.ndarray, cache: NormCache
                               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Spatial batch norm backward (staged graph). dout: (N, C, H, W) -> dx, dgamma (C,), dbeta."""
    return batchnorm_backward(dout, cache)


def spatial_groupnorm_backward(dout: np.ndarray, cache: NormCache
                               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Group norm backward (staged graph). dout: (N, C, H, W) -> dx, dgamma, dbeta in gamma's
    shape, e.g. (1, C, 1, 1)."""
    return batchnorm_backward(dout, cache)
