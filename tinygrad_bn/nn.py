"""Modules: thin stateful layers over Nodes (parameters, train/eval, running statistics)."""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from .node import Node
from .norm import (
    FusedBatchNorm,
    NormSpec,
    as_node,
    batchnorm_spec,
    broadcastable,
    check_eps,
    staged_nodes,
)
from .ops import record

__all__ = ["Module", "BatchNorm", "check_momentum"]


def check_momentum(momentum: Any) -> float:
    """momentum weights the *old* running value: new = momentum*old + (1-momentum)*batch."""
    if (isinstance(momentum, bool) or not isinstance(momentum, numbers.Real)
            or not 0.0 <= momentum <= 1.0):
        raise ValueError(f"momentum: expected a number in [0, 1], got {momentum!r}")
    return float(momentum)


class Module:
    """Base class: `parameters()`, `train()` / `eval()`, `zero_grad()`, call = forward."""

    training: bool = True

    def parameters(self) -> list[Node]:
        """The Nodes an optimizer updates, in a stable order."""
        found: list[Node] = []
        for value in vars(self).values():
            if isinstance(value, Node) and value.requires_grad:
                found.append(value)
            elif isinstance(value, Module):
                found.extend(value.parameters())
            elif isinstance(value, (list, tuple)):
                for item in value:
                    if isinstance(item, Module):
                        found.extend(item.parameters())
        return found

    def children(self) -> list[Module]:
        kids: list[Module] = []
        for value in vars(self).values():
            if isinstance(value, Module):
                kids.append(value)
            elif isinstance(value, (list, tuple)):
                kids.extend(item for item in value if isinstance(item, Module))
        return kids

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


class BatchNorm(Module):
    """Batch norm over (N, C) or (N, C, H, W) input, with running statistics.

    Training mode normalizes with the batch's mean and (biased) variance and updates
    running_mean/running_var as momentum*old + (1-momentum)*batch (the CS231n
    convention; PyTorch's momentum is 1 minus this). Evaluation mode uses the running
    statistics and leaves them untouched. fused=True uses the one-node closed-form op,
    fused=False the staged graph of primitives.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.9,
                 fused: bool = True, dtype: Any = np.float64) -> None:
        if (isinstance(num_features, bool) or not isinstance(num_features, numbers.Integral)
                or num_features <= 0):
            raise ValueError(f"num_features: expected a positive int, got {num_features!r}")
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise TypeError(f"dtype: expected float32 or float64, got {dtype}")
        self.num_features = int(num_features)
        self.eps = check_eps(eps)
        self.momentum = check_momentum(momentum)
        self.fused = bool(fused)
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
        x = as_node(x, "x")
        spec = self._spec(x)
        if not self.training:
            return self._eval_forward(x, spec)
        if self.fused:
            parents = (x, self.gamma, self.beta)
            spec.check_params(self.gamma, self.beta)
            out_data, context = FusedBatchNorm.forward(x.data, self.gamma.data, self.beta.data,
                                                       spec=spec)
            out = record(FusedBatchNorm, parents, out_data, context)
            mean, var = context.mean, context.var
        else:
            nodes = staged_nodes(x, self.gamma, self.beta, spec)
            out, mean, var = nodes["out"], nodes["mu"].data, nodes["var"].data
        # Only after the forward succeeded: a failing call must not move the statistics.
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
        inv_std = Node((1.0 / np.sqrt(self.running_var + self.eps)).reshape(shape).astype(x.dtype),
                       name="inv_std", requires_grad=False)
        xhat = ((x - mean) * inv_std).named("xhat")
        return (broadcastable(self.gamma, spec) * xhat + broadcastable(self.beta, spec)).named("out")

    def __repr__(self) -> str:
        kind = "fused" if self.fused else "staged"
        return (f"BatchNorm({self.num_features}, eps={self.eps:g}, momentum={self.momentum:g}, "
                f"{kind}, training={self.training})")
