"""Finite differences: the reference every analytic gradient here is checked against."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..core.node import Node, as_float_array

__all__ = ["numerical_gradient", "reference_gradient", "rel_error", "scaled_error", "gradcheck",
           "GradcheckResult", "EXTENDED"]


def numerical_gradient(f: Callable[[np.ndarray], Any], x: np.ndarray, upstream: Any,
                       h: float = 1e-5) -> np.ndarray:
    """Central-difference estimate of sum(upstream * f(x)) differentiated w.r.t. x.

    f: maps an array shaped like x to an array shaped like upstream. x is perturbed in
    place one entry at a time and restored exactly afterwards. Returns an array of x's
    shape (float64). Costs 2 * x.size calls of f.
    """
    if not isinstance(x, np.ndarray):
        raise TypeError(f"x: expected a numpy array (perturbed in place), got {type(x).__name__}")
    upstream = np.asarray(upstream, dtype=np.float64)
    grad = np.zeros(x.shape, dtype=np.float64)
    flat_x = x.reshape(-1)  # a view, so writes reach x (x must be contiguous)
    if not np.shares_memory(flat_x, x):
        raise ValueError("x: expected a contiguous array that can be perturbed in place")
    flat_grad = grad.reshape(-1)
    for i in range(flat_x.size):
        original = flat_x[i]
        flat_x[i] = original + h
        # Copies: f may return a view of x (reshape, transpose), which the next write changes.
        plus = np.array(f(x))
        flat_x[i] = original - h
        minus = np.array(f(x))
        flat_x[i] = original
        # Subtract in f's own precision (e.g. longdouble) before anything is rounded to float64.
        flat_grad[i] = np.sum((plus - minus) * upstream) / (2 * h)
    return grad


EXTENDED = np.longdouble if np.finfo(np.longdouble).eps < np.finfo(np.float64).eps else np.float64


def reference_gradient(f: Callable[[np.ndarray], Any], x: np.ndarray, upstream: Any,
                       coordinates: np.ndarray | None = None, h: float = 1e-4
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Central differences accurate enough to judge a float64 gradient by, with an error bar.

    Evaluates f in extended precision (x86's long double where numpy has it, else float64)
    and takes a Richardson step, R(h) = (4 D(h/2) - D(h)) / 3, which cancels the h^2 error
    term of the central difference D. The same step from 2h gives a second estimate; their
    difference is the error estimate. coordinates: flat indices to differentiate at (all
    when None). Returns (gradient, error estimate), float64 of x's shape, NaN elsewhere.
    """
    probe = np.array(x, dtype=EXTENDED)
    upstream = np.asarray(upstream, dtype=EXTENDED)
    flat = probe.reshape(-1)
    indices = range(flat.size) if coordinates is None else coordinates
    grad = np.full(flat.size, np.nan)
    error = np.full(flat.size, np.nan)

    def central(i: int, step: float) -> Any:
        original = flat[i]
        flat[i] = original + step
        plus = np.array(f(probe), dtype=EXTENDED)
        flat[i] = original - step
        minus = np.array(f(probe), dtype=EXTENDED)
        flat[i] = original
        return np.sum((plus - minus) * upstream) / (2 * EXTENDED(step))

    for i in indices:
        half, whole, double = central(i, h / 2), central(i, h), central(i, 2 * h)
        fine, coarse = (4 * half - whole) / 3, (4 * whole - double) / 3
        grad[i], error[i] = float(fine), float(abs(fine - coarse))
    return grad.reshape(x.shape), error.reshape(x.shape)


def rel_error(a: Any, b: Any) -> float:
    """The CS231n relative error: max |a - b| / max(1e-8, |a| + |b|), elementwise.

    NaN anywhere gives NaN (so a test of `error < tol` fails on it, as it should).
    """
    a, b = _as_pair(a, b, "rel_error")
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a - b) / np.maximum(1e-8, np.abs(a) + np.abs(b))))


def _as_pair(a: Any, b: Any, caller: str) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"{caller}: shapes differ, {a.shape} vs {b.shape}")
    return a, b


def scaled_error(a: Any, b: Any) -> float:
    """Normwise relative error max |a - b| / max(|a| + |b|), with the max over all entries.

    The measure for large arrays and for float32: an entry of a gradient that is near
    zero by cancellation carries an absolute rounding error of the gradient's *scale*, so
    the elementwise `rel_error` of that entry says nothing about the computation's quality.
    """
    a, b = _as_pair(a, b, "scaled_error")
    if a.size == 0:
        return 0.0
    scale = np.max(np.abs(a) + np.abs(b))
    return float(np.max(np.abs(a - b)) / max(1e-8, scale))


@dataclass
class GradcheckResult:
    """Per-input relative errors of analytic vs numeric gradients; truthy when all pass."""

    errors: dict[str, float] = field(default_factory=dict)
    tol: float = 1e-7

    @property
    def ok(self) -> bool:
        # `not error <= tol` so that NaN counts as a failure.
        return all(error <= self.tol for error in self.errors.values())

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        rows = [f"  {name:<12} rel_error {error:.3e}" for name, error in self.errors.items()]
        verdict = "ok" if self.ok else f"FAILED (tol {self.tol:g})"
        return "gradcheck " + verdict + "\n" + "\n".join(rows)


def gradcheck(fn: Callable[..., Node], *inputs: Any, upstream: Any = None, h: float = 1e-5,
              tol: float = 1e-7, seed: int = 0, normwise: bool = False) -> GradcheckResult:
    """Compare the analytic gradient of `fn` w.r.t. every input with central differences.

    fn: takes Nodes (one per input) and returns a Node. inputs: arrays or Nodes (their
    data is used; they are not modified). upstream: the gradient fed to backward, random
    normal (seeded) when None. The numeric side runs in float64 whatever the inputs' dtype.
    Errors are `rel_error` per entry, or `scaled_error` with normwise=True (robust to
    entries that are near zero by cancellation).
    """
    measure = scaled_error if normwise else rel_error
    arrays = [as_float_array(v.data if isinstance(v, Node) else v, f"inputs[{i}]")
              for i, v in enumerate(inputs)]
    nodes = [Node(array.copy(), name=f"input{i}") for i, array in enumerate(arrays)]
    out = fn(*nodes)
    if upstream is None:
        upstream = np.random.default_rng(seed).standard_normal(out.shape)
    out.backward(np.asarray(upstream, dtype=out.dtype))
    result = GradcheckResult(tol=tol)
    probes = [array.astype(np.float64) for array in arrays]
    for i, node in enumerate(nodes):
        def f(probe: np.ndarray, i: int = i) -> np.ndarray:
            args = [Node(p, requires_grad=False) for p in probes]
            args[i] = Node(probe, requires_grad=False)
            return fn(*args).data

        numeric = numerical_gradient(f, probes[i].copy(), upstream, h)
        analytic = node.grad if node.grad is not None else np.zeros_like(numeric)
        result.errors[node.name or f"input{i}"] = measure(analytic, numeric)
    return result
