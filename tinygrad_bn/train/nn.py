"""Modules: thin stateful layers over Nodes (parameters, train/eval, running statistics)."""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from ..core.functional import as_operand
from ..core.node import Node
from ..norm import (
    NORMS,
    FusedBatchNorm,
    NormSpec,
    batchnorm_spec,
    broadcastable,
    check_eps,
    fused_node,
    fused_training_node,
    groupnorm_spec,
    layernorm_spec,
    staged_nodes,
)

__all__ = ["Module", "BatchNorm", "LayerNorm", "GroupNorm", "Linear", "ReLU", "Sequential",
           "check_momentum"]



def check_momentum(momentum: Any) -> float:
    """momentum weights the *old* running value: new = momentum*old + (1-momentum)*batch."""
    if (isinstance(momentum, bool) or not isinstance(momentum, numbers.Real)
            or not 0.0 <= momentum <= 1.0):
        raise ValueError(f"momentum: expected a number in [0, 1], got {momentum!r}")
    return float(momentum)


def check_positive_int(value: Any, argname: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{argname}: expected a positive int, got {value!r}")
    return int(value)


def check_dtype(dtype: Any) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"dtype: expected float32 or float64, got {dtype}")
    return dtype


def _params_like(norm: Any, x: Node) -> tuple[Node, Node]:
    # gamma and beta in x's dtype (a cast node when they differ), so that the output of a
    # normalization always has its input's dtype.
    if norm.gamma.dtype == x.dtype:
        return norm.gamma, norm.beta
    return norm.gamma.astype(x.dtype), norm.beta.astype(x.dtype)


class Module:
    """Base class: parameters, train/eval, zero_grad, state dicts; calling it runs forward.

    Parameters are the Node attributes that require grad (and those of child modules, in
    attributes or in lists), named by their path: "layers.0.W". Buffers (BUFFERS, e.g. the
    running statistics) are arrays saved in the state dict too.
    """

    training: bool = True
    BUFFERS: tuple[str, ...] = ()
    NONNEGATIVE: tuple[str, ...] = ()  # buffers that must be >= 0 (variances)

    def named_parameters(self, prefix: str = "") -> list[tuple[str, Node]]:
        """(name, parameter) pairs in a stable order, each parameter once (weight tying)."""
        found: list[tuple[str, Node]] = []
        seen: set[int] = set()
        for name, value in self._named_members(prefix):
            if isinstance(value, Node) and value.requires_grad and id(value) not in seen:
                seen.add(id(value))
                found.append((name, value))
        return found

    def parameters(self) -> list[Node]:
        """The Nodes an optimizer updates, each once, in a stable order."""
        return [parameter for _, parameter in self.named_parameters()]

    def _named_members(self, prefix: str) -> list[tuple[str, Any]]:
        members: list[tuple[str, Any]] = []
        for key, value in vars(self).items():
            name = f"{prefix}{key}"
            if isinstance(value, Module):
                members.extend(value._named_members(f"{name}."))
            elif isinstance(value, (list, tuple)):
                for index, item in enumerate(value):
                    if isinstance(item, Module):
                        members.extend(item._named_members(f"{name}.{index}."))
            elif isinstance(value, Node):
                members.append((name, value))
        members.extend((f"{prefix}{key}", getattr(self, key)) for key in self.BUFFERS)
        return members

    def children(self) -> list[Module]:
        kids: list[Module] = []
        for value in vars(self).values():
            if isinstance(value, Module):
                kids.append(value)
            elif isinstance(value, (list, tuple)):
                kids.extend(item for item in value if isinstance(item, Module))
        return kids

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of every parameter's and buffer's array, by name."""
        return {name: np.array(value.data if isinstance(value, Node) else value, copy=True)
                for name, value in self._named_members("")
                if not isinstance(value, Node) or value.requires_grad}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Set every parameter and buffer from `state` (as `state_dict` returns it).

        Every entry must be a float32 or float64 numpy array of the right shape with finite
        values (variances, such as BatchNorm's running_var, also >= 0), checked on the data
        that is loaded (a masked array's mask is ignored, as everywhere in the engine);
        nothing is changed unless everything fits (KeyError names missing or unexpected names, ValueError the
        entry that does not fit).

        dtype rule, per module (a Linear, a BatchNorm, ...): a module whose dtype is still
        open (made without `dtype=` and not yet given an input) takes the state's dtype, so
        values load bit for bit and the module then keeps that dtype (as if made with it);
        a module whose dtype is fixed (given, or set by its first input or an earlier load)
        keeps it and the values are converted to it: exact from float32 to float64, rounded
        from float64 to float32 (as PyTorch's copy into a parameter does). All arrays of one
        module in `state` must share one dtype.
        """
        own = {name: value for name, value in self._named_members("")
               if not isinstance(value, Node) or value.requires_grad}
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or unexpected:
            raise KeyError(f"state: missing {missing or 'nothing'}, unexpected "
                           f"{unexpected or 'nothing'}")
        owners: dict[int, tuple[Any, list[str]]] = {}
        for name in own:
            module = self._owner_of(name)[0]
            owners.setdefault(id(module), (module, []))[1].append(name)
        arrays: dict[str, np.ndarray] = {}
        adopting: list[tuple[Any, np.dtype]] = []
        for module, names in owners.values():
            dtypes = {name: _checked_entry(name, state[name]).dtype for name in names}
            if getattr(module, "dtype_given", True):
                targets = {name: _array_dtype(own[name]) for name in names}
            else:
                first = names[0]
                for name in names[1:]:
                    if dtypes[name] != dtypes[first]:
                        raise ValueError(
                            f"state: the arrays of one module share one dtype; got "
                            f"{dtypes[first]} ({_short(first)!r}) and {dtypes[name]} "
                            f"({_short(name)!r})")
                targets = dict.fromkeys(names, dtypes[first])
                adopting.append((module, dtypes[first]))
            for name in names:
                arrays[name] = _converted_entry(name, _checked_entry(name, state[name]),
                                                np.shape(_data_of(own[name])),
                                                targets[name],
                                                name.rpartition(".")[2] in module.NONNEGATIVE)
        for module, dtype in adopting:  # only now that every entry fits
            module.dtype_given = True
            for parameter in module.parameters():
                parameter.data = parameter.data.astype(dtype)
        for name, array in arrays.items():
            target = own[name]
            if isinstance(target, Node):
                target.assign(array)  # recorded: a graph built from the old value refuses
            else:
                module, _, attribute = self._owner_of(name)
                setattr(module, attribute, array)

    def _owner_of(self, name: str) -> tuple[Module, str, str]:
        module: Any = self
        *path, attribute = name.split(".")
        for part in path:
            module = module[int(part)] if isinstance(module, (list, tuple)) else getattr(module, part)
        return module, ".".join(path), attribute

    def train(self, mode: bool = True) -> Module:
        """Switch to training mode (batch statistics); returns self."""
        self.training = bool(mode)
        for child in self.children():
            child.train(mode)
        return self

    def eval(self) -> Module:
        """Switch to evaluation mode (running statistics); returns self."""
        return self.train(False)

    def zero_grad(self) -> None:
        """Clear the gradients of every parameter."""
        for parameter in self.parameters():
            parameter.grad = None

    def forward(self, x: Node) -> Node:
        raise NotImplementedError

    def __call__(self, x: Any) -> Node:
        return self.forward(x)

    def extra_repr(self) -> str:
        """What goes between the parentheses of the module's repr."""
        return ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"


def _data_of(value: Any) -> Any:
    return value.data if isinstance(value, Node) else value


def _array_dtype(value: Any) -> np.dtype:
    return np.asarray(_data_of(value)).dtype


def _short(name: str) -> str:
    return name.rpartition(".")[2]


def _checked_entry(name: str, value: Any) -> np.ndarray:
    if not isinstance(value, np.ndarray):
        raise ValueError(f"state[{name!r}]: expected a numpy array, got {type(value).__name__}")
    # The data itself, as a plain array: a subclass's own rules (a masked array's mask, whose
    # tests answer "masked" rather than True) must not hide values that would be loaded.
    value = np.asarray(value)
    if value.dtype not in (np.float32, np.float64):
        raise ValueError(f"state[{name!r}]: expected a float32 or float64 array, got "
                         f"{value.dtype}")
    return value


def _converted_entry(name: str, value: np.ndarray, shape: tuple[int, ...], dtype: np.dtype,
                     nonnegative: bool) -> np.ndarray:
    """A copy of state[name] in `dtype`, checked: shape, finite, >= 0 for variances."""
    if value.shape != shape:
        raise ValueError(f"state[{name!r}]: expected shape {shape}, got shape {value.shape}")
    with np.errstate(over="ignore"):
        array = value.astype(dtype)  # always a copy: later changes to `state` do not leak in
    for bad, expected in ((~np.isfinite(array), f"finite values in {dtype}"),
                          (array < 0 if nonnegative else None, "variances >= 0")):
        if bad is not None and bad.any():
            index = tuple(int(k) for k in np.argwhere(bad)[0])
            raise ValueError(f"state[{name!r}]: expected {expected}, got {float(value[index])!r} at "
                             f"index {index}")
    return array


def _follow_dtype(module: Any, x: Node) -> None:
    # Parameters and running statistics made without a dtype take that of the first input.
    if module.dtype_given or module.parameters()[0].dtype == x.dtype:
        return
    module.dtype_given = True
    for parameter in module.parameters():  # first use: no graph was built from them yet
        parameter.data = parameter.data.astype(x.dtype)
    for key in module.BUFFERS:
        setattr(module, key, getattr(module, key).astype(x.dtype))


class BatchNorm(Module):
    """Batch norm over (N, C) or (N, C, H, W) input, with running statistics.

    Training mode normalizes with the batch's mean and (biased) variance and updates
    running_mean/running_var as momentum*old + (1-momentum)*batch (the CS231n
    convention; PyTorch's momentum is 1 minus this). Evaluation mode uses the running
    statistics and leaves them untouched. fused=True uses the one-node closed-form op,
    fused=False the staged graph of primitives. dtype: of the parameters and running
    statistics; None (the default) takes the first input's. The output always has the
    input's dtype. Training needs more than one value per channel.

    running_var averages the biased batch variance (divided by the count m, as the
    normalization itself uses: the CS231n convention). unbiased_running_var=True averages
    m/(m-1) times it instead, PyTorch's convention (then set momentum to 1 - torch's).
    """

    BUFFERS = ("running_mean", "running_var")
    NONNEGATIVE = ("running_var",)

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.9,
                 fused: bool = True, dtype: Any = None, unbiased_running_var: bool = False
                 ) -> None:
        num_features = check_positive_int(num_features, "num_features")
        self.dtype_given = dtype is not None
        dtype = check_dtype(np.float64 if dtype is None else dtype)
        self.num_features = num_features
        self.eps = check_eps(eps)
        self.momentum = check_momentum(momentum)
        self.fused = bool(fused)
        self.unbiased_running_var = bool(unbiased_running_var)
        self.gamma = Node(np.ones(num_features, dtype), name="gamma")
        self.beta = Node(np.zeros(num_features, dtype), name="beta")
        # Ones, not zeros, for the variance: an untrained model in eval mode is the identity.
        self.running_mean = np.zeros(num_features, dtype)
        self.running_var = np.ones(num_features, dtype)

    def _spec(self, x: Node) -> NormSpec:
        if x.ndim not in (2, 4) or x.shape[1] != self.num_features:
            raise ValueError(
                f"x: expected shape (N, {self.num_features}) or (N, {self.num_features}, H, W), "
                f"got {x.shape}"
            )
        return batchnorm_spec(x.shape, None, self.eps)

    def forward(self, x: Any) -> Node:
        """x: (N, C) or (N, C, H, W) -> same shape."""
        x = as_operand(x, "x")
        spec = self._spec(x)
        _follow_dtype(self, x)
        if not self.training:
            return self._eval_forward(x, spec)
        if spec.count < 2:
            raise ValueError(f"x: expected more than 1 value per channel when training, got "
                             f"input shape {x.shape} (use eval() for single samples)")
        if self.fused:
            out, mean, var = fused_training_node(FusedBatchNorm, x, *_params_like(self, x), spec)
        else:
            nodes = staged_nodes(x, *_params_like(self, x), spec)
            out, mean, var = nodes["out"], nodes["mu"].data, nodes["var"].data
        # Only after the forward succeeded: a failing call must not move the statistics.
        if self.unbiased_running_var:
            var = var * (spec.count / (spec.count - 1))
        keep = self.momentum
        self.running_mean = (keep * self.running_mean
                             + (1 - keep) * mean.reshape(self.num_features)).astype(
            self.running_mean.dtype)
        self.running_var = (keep * self.running_var
                            + (1 - keep) * var.reshape(self.num_features)).astype(
            self.running_var.dtype)
        return out

    def _eval_forward(self, x: Node, spec: NormSpec) -> Node:
        shape = spec.param_bshape
        mean = Node(self.running_mean.reshape(shape).astype(x.dtype), name="running_mean",
                    requires_grad=False)
        ivar = Node((1.0 / np.sqrt(self.running_var + self.eps)).reshape(shape).astype(x.dtype),
                       name="ivar", requires_grad=False)
        xhat = ((x - mean) * ivar).named("xhat")
        gamma, beta = _params_like(self, x)
        return (broadcastable(gamma, spec) * xhat + broadcastable(beta, spec)).named("out")

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps:g}, momentum={self.momentum:g}, "
                f"fused={self.fused}"
                + (", unbiased_running_var=True" if self.unbiased_running_var else ""))


class _StatelessNorm(Module):
    """A normalization without running statistics (layer, group): same in train and eval."""

    kind = ""

    def _spec(self, x: Node) -> NormSpec:
        raise NotImplementedError

    def forward(self, x: Any) -> Node:
        x = as_operand(x, "x")
        spec = self._spec(x)
        _follow_dtype(self, x)
        if self.fused:
            return fused_node(NORMS[self.kind], x, *_params_like(self, x), spec)
        return staged_nodes(x, *_params_like(self, x), spec)["out"]


class LayerNorm(_StatelessNorm):
    """Layer norm over each sample's features. normalized_shape: x.shape[1:], e.g. 64 or (C, H, W)."""

    kind = "layer"

    def __init__(self, normalized_shape: int | tuple[int, ...], eps: float = 1e-5,
                 fused: bool = True, dtype: Any = None) -> None:
        shape = (normalized_shape,) if isinstance(normalized_shape, numbers.Integral) else tuple(
            normalized_shape)
        for size in shape:
            check_positive_int(size, "normalized_shape")
        self.dtype_given = dtype is not None
        dtype = check_dtype(np.float64 if dtype is None else dtype)
        self.normalized_shape = tuple(int(s) for s in shape)
        self.eps = check_eps(eps)
        self.fused = bool(fused)
        self.gamma = Node(np.ones(self.normalized_shape, dtype), name="gamma")
        self.beta = Node(np.zeros(self.normalized_shape, dtype), name="beta")

    def extra_repr(self) -> str:
        shape = self.normalized_shape
        return f"{shape[0] if len(shape) == 1 else shape}, eps={self.eps:g}, fused={self.fused}"

    def _spec(self, x: Node) -> NormSpec:
        if x.shape[1:] != self.normalized_shape or x.ndim < 2:
            raise ValueError(
                f"x: expected shape (N, {', '.join(map(str, self.normalized_shape))}), got {x.shape}")
        return layernorm_spec(x.shape, self.eps)


class GroupNorm(_StatelessNorm):
    """Group norm: (N, C, H, W) in num_groups groups of channels; per-channel gamma/beta."""

    kind = "group"

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, fused: bool = True,
                 dtype: Any = None) -> None:
        self.num_groups = check_positive_int(num_groups, "num_groups")
        self.num_channels = check_positive_int(num_channels, "num_channels")
        if self.num_channels % self.num_groups:
            raise ValueError(f"num_groups: expected a divisor of num_channels={num_channels}, "
                             f"got {num_groups}")
        self.dtype_given = dtype is not None
        dtype = check_dtype(np.float64 if dtype is None else dtype)
        self.eps = check_eps(eps)
        self.fused = bool(fused)
        self.gamma = Node(np.ones(self.num_channels, dtype), name="gamma")
        self.beta = Node(np.zeros(self.num_channels, dtype), name="beta")

    def extra_repr(self) -> str:
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps:g}, fused={self.fused}"

    def _spec(self, x: Node) -> NormSpec:
        if x.ndim != 4 or x.shape[1] != self.num_channels:
            raise ValueError(f"x: expected shape (N, {self.num_channels}, H, W), got {x.shape}")
        return groupnorm_spec(x.shape, self.num_groups, self.eps)


class Linear(Module):
    """x @ W + b. x: (N, in_features) -> (N, out_features).

    W starts as weight_scale * standard normal (the CS231n convention); weight_scale=None
    means He initialization, sqrt(2 / in_features).
    """

    def __init__(self, in_features: int, out_features: int, weight_scale: float | None = None,
                 rng: np.random.Generator | None = None, dtype: Any = None) -> None:
        self.in_features = check_positive_int(in_features, "in_features")
        self.out_features = check_positive_int(out_features, "out_features")
        if weight_scale is None:
            weight_scale = float(np.sqrt(2.0 / in_features))
        if (isinstance(weight_scale, bool) or not isinstance(weight_scale, numbers.Real)
                or not (math.isfinite(weight_scale) and weight_scale > 0)):
            raise ValueError(f"weight_scale: expected a finite number > 0, got {weight_scale!r}")
        self.dtype_given = dtype is not None
        dtype = check_dtype(np.float64 if dtype is None else dtype)
        rng = rng if rng is not None else np.random.default_rng()
        self.W = Node((weight_scale * rng.standard_normal((in_features, out_features))).astype(dtype),
                      name="W")
        self.b = Node(np.zeros(out_features, dtype), name="b")

    def forward(self, x: Any) -> Node:
        x = as_operand(x, "x")
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"x: expected shape (N, {self.in_features}), got {x.shape}")
        _follow_dtype(self, x)
        return x @ self.W + self.b

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}"


class ReLU(Module):
    """max(x, 0), elementwise."""

    def forward(self, x: Any) -> Node:
        return as_operand(x, "x").relu()


class Sequential(Module):
    """Layers applied in order; `layers[i]` is the i-th."""

    def __init__(self, *layers: Module) -> None:
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise TypeError(f"layers[{i}]: expected a Module, got {type(layer).__name__}")
        self.layers = list(layers)
        for name, parameter in self.named_parameters():  # "layers.0.W", as drawings show it
            parameter.name = name

    def forward(self, x: Any) -> Node:
        for layer in self.layers:
            x = layer(x)
        return x

    def extra_repr(self) -> str:
        return ", ".join(repr(layer) for layer in self.layers)
