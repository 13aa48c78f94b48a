"""The peers the engine is measured against, written here so that every one is plain code.

Nothing in this file imports torch at module level: the numpy process must stay free of it
(importing torch changes glibc's malloc behaviour and hides numpy's page-fault costs).
"""

from __future__ import annotations

import numpy as np

EPS = 1e-5


def axes_for(shape: tuple[int, ...]) -> tuple[int, ...]:
    return (0,) if len(shape) == 2 else (0, 2, 3)


def numpy_formulas(x, gamma, beta, dout):
    """The assignment's batchnorm_forward (train) + batchnorm_backward_alt, in plain numpy."""
    axes = axes_for(x.shape)
    count = x.size // gamma.size
    mean = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)
    std = np.sqrt(var + EPS)
    x_hat = (x - mean) / std
    out = gamma * x_hat + beta
    dbeta = dout.sum(axis=axes)
    dgamma = (dout * x_hat).sum(axis=axes)
    dx_hat = dout * gamma
    dx = dx_hat / std
    dx = (dx - (dx * x_hat).sum(axis=axes, keepdims=True) * x_hat / count
          - dx.sum(axis=axes, keepdims=True) / count)
    return out, dx, dgamma, dbeta


def numpy_staged(x, gamma, beta, dout):
    """The ten-stage computational graph, forward and backward, in plain numpy."""
    axes = axes_for(x.shape)
    count = x.size // gamma.size
    mu = x.mean(axis=axes, keepdims=True)
    xmu = x - mu
    sq = xmu ** 2
    var = sq.mean(axis=axes, keepdims=True)
    sqrtvar = np.sqrt(var + EPS)
    ivar = 1.0 / sqrtvar
    xhat = xmu * ivar
    gammax = gamma * xhat
    out = gammax + beta
    dbeta = dout.sum(axis=axes)
    dgamma = (dout * xhat).sum(axis=axes)
    dxhat = dout * gamma
    divar = (dxhat * xmu).sum(axis=axes, keepdims=True)
    dxmu1 = dxhat * ivar
    dsqrtvar = -1.0 / sqrtvar ** 2 * divar
    dvar = 0.5 / sqrtvar * dsqrtvar
    dsq = np.broadcast_to(dvar / count, x.shape)
    dxmu2 = 2 * xmu * dsq
    dx1 = dxmu1 + dxmu2
    dmu = -dx1.sum(axis=axes, keepdims=True)
    dx = dx1 + np.broadcast_to(dmu / count, x.shape)
    return out, dx, dgamma, dbeta


class ClosureValue:
    """micrograd's Value as published (each op's backward a closure over its own output, so
    every node sits in a reference cycle), except for an iterative topological sort, without
    which a 10,000-deep chain exceeds Python's recursion limit."""

    def __init__(self, data, _children=(), _op=""):
        self.data = data
        self.grad = 0
        self._backward = lambda: None
        self._prev = set(_children)
        self._op = _op

    def __add__(self, other):
        other = other if isinstance(other, ClosureValue) else ClosureValue(other)
        out = ClosureValue(self.data + other.data, (self, other), "+")

        def _backward():
            self.grad += out.grad
            other.grad += out.grad

        out._backward = _backward
        return out

    def __mul__(self, other):
        other = other if isinstance(other, ClosureValue) else ClosureValue(other)
        out = ClosureValue(self.data * other.data, (self, other), "*")

        def _backward():
            self.grad += other.data * out.grad
            other.grad += self.data * out.grad

        out._backward = _backward
        return out

    def backward(self):
        topo, visited, stack = [], {self}, [(self, iter(self._prev))]
        while stack:
            node, children = stack[-1]
            for child in children:
                if child not in visited:
                    visited.add(child)
                    stack.append((child, iter(child._prev)))
                    break
            else:
                stack.pop()
                topo.append(node)
        self.grad = 1
        for node in reversed(topo):
            node._backward()


def chain_graph(make_leaf, ops: int):
    """y = (((x * c) + d) * c) + d ... : `ops` ops, one long dependency chain."""
    x = make_leaf(1.0)
    y = x
    for _ in range(ops // 2):
        y = y * 1.0001 + 0.5
    return y


def wide_graph(make_leaf, ops: int):
    """ops/2 leaves squared, then summed pairwise: a wide, shallow graph of `ops` ops."""
    level = [leaf * leaf for leaf in (make_leaf(0.001 * i) for i in range(ops // 2))]
    while len(level) > 1:
        level = [level[i] + level[i + 1] if i + 1 < len(level) else level[i]
                 for i in range(0, len(level), 2)]
    return level[0]
