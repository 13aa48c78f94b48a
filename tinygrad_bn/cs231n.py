"""Drop-in replacements for every function of the CS231n assignment-2 `layers.py`.

    from tinygrad_bn.cs231n import affine_forward, conv_forward_naive, softmax_loss, ...

Same signatures and parameter dicts as the assignment's `layers.py`: numpy arrays in
and out. Every `*_backward` runs the backward pass of the staged graph (one node per
step of the computational-graph diagram); `batchnorm_backward_alt` the closed form.
Normalizations: batchnorm_forward/backward(_alt), layernorm_forward/backward,
spatial_batchnorm_forward/backward and spatial_groupnorm_forward/backward. The other
layers: affine_forward/backward, relu_forward/backward, dropout_forward/backward,
conv_forward_naive/conv_backward_naive, max_pool_forward_naive/max_pool_backward_naive,
svm_loss and softmax_loss (the "naive" ones are staged graphs too, not loops).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .core.node import Node, as_float_array, stages
from .layers import (
    affine_staged,
    conv_staged,
    dropout_mask,
    dropout_staged,
    max_pool_staged,
    relu_staged,
    softmax_staged,
    svm_staged,
)
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
    "affine_forward", "affine_backward", "relu_forward", "relu_backward", "dropout_forward",
    "dropout_backward", "conv_forward_naive", "conv_backward_naive", "max_pool_forward_naive",
    "max_pool_backward_naive", "svm_loss", "softmax_loss", "LayerCache",
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


# --- the other layers of layers.py ---------------------------------------------------
@dataclass
class LayerCache:
    """What a layer's backward needs: its staged graph's output and the inputs that get
    gradients, in the order the backward returns them."""

    inputs: tuple[Node, ...]
    out: Node
    layer: str

    @property
    def stages(self) -> dict[str, Node]:
        """The staged graph's nodes by name, gradients included after a backward."""
        return stages(self.out)


def _leaf(value: Any, name: str) -> Node:
    # A copy: the caller's array may change after the forward (the notebooks reuse them).
    return Node(as_float_array(value, name).copy(), name=name)


def _layer_backward(dout: Any, cache: Any, layer: str) -> tuple[np.ndarray, ...]:
    if not isinstance(cache, LayerCache) or cache.layer != layer:
        got = cache.layer if isinstance(cache, LayerCache) else type(cache).__name__
        raise TypeError(f"cache: expected the cache returned by {layer}'s forward function, got {got}")
    dout = as_float_array(dout, "dout")
    if dout.shape != cache.out.shape:
        raise ValueError(f"dout: expected shape {cache.out.shape} (the forward's output), got {dout.shape}")
    # Fresh gradients on every call: the same cache may be backpropagated more than once.
    cache.out.zero_grad()
    cache.out.backward(dout.astype(cache.out.dtype, copy=False))
    return tuple(node.grad.copy() for node in cache.inputs)


def affine_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, LayerCache]:
    """x: (N, d_1, ..., d_k), w: (D, M), b: (M,) -> (out (N, M), cache)."""
    nodes = (_leaf(x, "x"), _leaf(w, "w"), _leaf(b, "b"))
    out = affine_staged(*nodes)["out"]
    return out.data, LayerCache(nodes, out, "affine")


def affine_backward(dout: np.ndarray, cache: LayerCache) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """dout: (N, M) -> dx (x's shape), dw (D, M), db (M,)."""
    return _layer_backward(dout, cache, "affine")


def relu_forward(x: np.ndarray) -> tuple[np.ndarray, LayerCache]:
    """x: any shape -> (max(x, 0), cache)."""
    node = _leaf(x, "x")
    out = relu_staged(node)["out"]
    return out.data, LayerCache((node,), out, "relu")


def relu_backward(dout: np.ndarray, cache: LayerCache) -> np.ndarray:
    """dout: x's shape -> dx (0 where x <= 0)."""
    return _layer_backward(dout, cache, "relu")[0]


P_MEANINGS = ("keep", "drop")


def dropout_forward(x: np.ndarray, dropout_param: dict, p_is: str = "keep"
                    ) -> tuple[np.ndarray, LayerCache]:
    """Inverted dropout. x: any shape -> (out, cache).

    dropout_param: "mode" ('train' or 'test', required), "p" (required), "seed" (optional:
    seeds numpy's global generator first, as the assignment does, so that a notebook's
    numbers come out the same). p is the probability of keeping a unit, as in the current
    assignment; the 2016-2017 assignment's p was the probability of dropping one: pass
    p_is="drop" for that wording. Train mode keeps each unit with its probability and
    scales the kept ones by 1 / keep; test mode returns x unchanged.
    """
    mode = dropout_param.get("mode")
    if mode not in MODES:
        raise ValueError(f"dropout_param['mode']: expected 'train' or 'test', got {mode!r}")
    if p_is not in P_MEANINGS:
        raise ValueError(f"p_is: expected 'keep' or 'drop', got {p_is!r}")
    p = dropout_param.get("p")
    if isinstance(p, bool) or not isinstance(p, (int, float, np.floating)) or not (
            (0 < p <= 1) if p_is == "keep" else (0 <= p < 1)):
        interval = "(0, 1] (the probability of keeping a unit)" if p_is == "keep" else \
            "[0, 1) (the probability of dropping a unit)"
        raise ValueError(f"dropout_param['p']: expected a number in {interval}, got {p!r}")
    keep = float(p) if p_is == "keep" else 1.0 - float(p)
    node = _leaf(x, "x")
    if mode == "test":
        out = node.data.copy()
        return out, LayerCache((node,), Node(out, name="out"), "dropout (test mode)")
    if "seed" in dropout_param:
        np.random.seed(dropout_param["seed"])
    mask = dropout_mask(node.shape, keep, np.random.rand(*node.shape), node.dtype)
    out = dropout_staged(node, mask)["out"]
    return out.data, LayerCache((node,), out, "dropout")


def dropout_backward(dout: np.ndarray, cache: LayerCache) -> np.ndarray:
    """dout: x's shape -> dx (dout * mask in train mode; dout in test mode)."""
    if isinstance(cache, LayerCache) and cache.layer == "dropout (test mode)":
        dout = as_float_array(dout, "dout")
        if dout.shape != cache.out.shape:
            raise ValueError(f"dout: expected shape {cache.out.shape} (x's), got {dout.shape}")
        return dout.astype(cache.out.dtype, copy=True)
    return _layer_backward(dout, cache, "dropout")[0]


def _param(params: dict, key: str, argname: str) -> Any:
    if not isinstance(params, dict) or key not in params:
        raise ValueError(f"{argname}: expected a dict with {key!r}, got {params!r}")
    return params[key]


def conv_forward_naive(x: np.ndarray, w: np.ndarray, b: np.ndarray, conv_param: dict
                       ) -> tuple[np.ndarray, LayerCache]:
    """x: (N, C, H, W), w: (F, C, HH, WW), b: (F,), conv_param: {"stride", "pad"} ->
    (out (N, F, H', W'), cache), H' = 1 + (H + 2 * pad - HH) / stride."""
    stride = _param(conv_param, "stride", "conv_param")
    padding = _param(conv_param, "pad", "conv_param")
    nodes = (_leaf(x, "x"), _leaf(w, "w"), _leaf(b, "b"))
    try:
        out = conv_staged(*nodes, stride=stride, padding=padding)["out"]
    except ValueError as error:
        raise ValueError(_in_params(str(error), "conv_param", ("stride", "pad"))) from None
    return out.data, LayerCache(nodes, out, "conv")


def _in_params(message: str, dict_name: str, keys: tuple[str, ...]) -> str:
    # "stride: ..." said as "conv_param['stride']: ...", the name the caller wrote.
    for key in keys:
        if message.startswith(f"{key}:"):
            return f"{dict_name}[{key!r}]" + message[len(key):]
    return message


def conv_backward_naive(dout: np.ndarray, cache: LayerCache) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """dout: (N, F, H', W') -> dx (N, C, H, W), dw (F, C, HH, WW), db (F,)."""
    return _layer_backward(dout, cache, "conv")


def max_pool_forward_naive(x: np.ndarray, pool_param: dict) -> tuple[np.ndarray, LayerCache]:
    """x: (N, C, H, W), pool_param: {"pool_height", "pool_width", "stride"} ->
    (out (N, C, H', W'), cache), H' = 1 + (H - pool_height) / stride."""
    sizes = [_param(pool_param, key, "pool_param") for key in ("pool_height", "pool_width", "stride")]
    node = _leaf(x, "x")
    try:
        out = max_pool_staged(node, *sizes)["out"]
    except ValueError as error:
        raise ValueError(_in_params(str(error), "pool_param",
                                    ("pool_height", "pool_width", "stride"))) from None
    return out.data, LayerCache((node,), out, "max_pool")


def max_pool_backward_naive(dout: np.ndarray, cache: LayerCache) -> np.ndarray:
    """dout: (N, C, H', W') -> dx (N, C, H, W); elements tied for a window's max share its
    gradient evenly."""
    return _layer_backward(dout, cache, "max_pool")[0]


def _loss(staged: Any, x: Any, y: Any) -> tuple[float, np.ndarray]:
    node = _leaf(x, "x")
    loss = staged(node, y)["loss"]
    loss.backward()
    return float(loss.data), node.grad.copy()


def svm_loss(x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Multiclass SVM loss. x: (N, C) scores, y: (N,) labels in [0, C) -> (loss, dx (N, C))."""
    return _loss(svm_staged, x, y)


def softmax_loss(x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Softmax (cross-entropy) loss. x: (N, C) scores, y: (N,) labels -> (loss, dx (N, C))."""
    return _loss(softmax_staged, x, y)
