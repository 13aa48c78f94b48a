"""Staged vs fused vs finite differences for a normalization, as a report object."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..core.node import Node, as_float_array
from ..norm import (
    NORMS,
    FusedBatchNorm,
    FusedNorm,
    NormSpec,
    batchnorm_spec,
    fused_node,
    norm_spec,
    normalize,
    staged_nodes,
    statistics,
)
from .gradcheck import numerical_gradient, scaled_error

__all__ = ["NormReport", "compare_batchnorm", "compare_normalization", "compare_norm", "TOLERANCES"]

# (staged vs fused, either vs numeric, forward relative to the output's scale). A gradient
# off by a relative r shows as r/2 in the normwise measure, so float32's 3e-5 fails a
# gradient 1e-4 away from the truth while float32 rounding (~1e-6 here) passes.
TOLERANCES = {
    np.dtype(np.float64): {"pair": 1e-10, "numeric": 1e-8, "forward": 1e-10},
    np.dtype(np.float32): {"pair": 3e-5, "numeric": 3e-5, "forward": 1e-4},
}
GRAD_NAMES = ("dx", "dgamma", "dbeta")
COLUMNS = ("staged~fused", "staged~numeric", "fused~numeric")


@dataclass
class NormReport:
    """Agreement of the staged graph, the fused op and central differences.

    errors[grad][column]: grad in dx/dgamma/dbeta, column in staged~fused,
    staged~numeric, fused~numeric. `ok` is False if any number exceeds its tolerance
    or is NaN.
    """

    kind: str
    shape: tuple[int, ...]
    dtype: str
    reduce_axes: tuple[int, ...]
    eps: float
    metric: str
    forward_max_abs_diff: float
    forward_scale: float
    tolerances: dict[str, float]
    errors: dict[str, dict[str, float]] = field(default_factory=dict)

    def failures(self) -> list[str]:
        """Human-readable list of what exceeded its tolerance (empty when ok)."""
        failed = []
        forward_tol = self.tolerances["forward"] * max(1.0, self.forward_scale)
        if not self.forward_max_abs_diff <= forward_tol:
            failed.append(f"forward max abs diff {self.forward_max_abs_diff:.3e} > {forward_tol:.1e}")
        for grad, row in self.errors.items():
            for column, error in row.items():
                tol = self.tolerances["pair" if column == "staged~fused" else "numeric"]
                if not error <= tol:  # NaN fails too
                    failed.append(f"{grad} {column} {error:.3e} > {tol:.0e}")
        return failed

    @property
    def ok(self) -> bool:
        return not self.failures()

    def __str__(self) -> str:
        lines = [
            f"{self.kind}: x {self.shape} {self.dtype}, reduced over axes {self.reduce_axes}, "
            f"eps {self.eps:g}",
            f"forward   max |staged - fused| = {self.forward_max_abs_diff:.3e}",
            f"error     {self.metric}",
            f"{'grad':<9} " + " ".join(f"{c:>15}" for c in COLUMNS),
        ]
        for grad, row in self.errors.items():
            lines.append(f"{grad:<9} " + " ".join(f"{row[c]:>15.3e}" for c in COLUMNS))
        tol = self.tolerances
        lines.append(f"tolerance staged~fused {tol['pair']:.0e}, vs numeric {tol['numeric']:.0e}")
        failed = self.failures()
        lines.append("verdict   " + ("ok" if not failed else "FAILED: " + "; ".join(failed)))
        return "\n".join(lines)


def compare_norm(spec: NormSpec, fused_op: type[FusedNorm], x: Any, gamma: Any, beta: Any,
                 dout: Any = None, *, seed: int = 0, h: float = 1e-5) -> NormReport:
    """Run one normalization staged, fused and numerically and compare the gradients.

    The numeric gradients are central differences of the fused forward in float64, so a
    float32 run is measured against a float64 reference. Every column is the normwise
    relative error (`scaled_error`).
    """
    x = as_float_array(x, "x")
    gamma = as_float_array(gamma, "gamma")
    beta = as_float_array(beta, "beta")
    dtype = x.dtype
    gamma, beta = gamma.astype(dtype), beta.astype(dtype)
    if dout is None:
        dout = np.random.default_rng(seed).standard_normal(x.shape)
    dout = as_float_array(dout, "dout")
    if dout.shape != x.shape:
        raise ValueError(f"dout: expected x's shape {x.shape}, got {dout.shape}")
    dout = dout.astype(dtype)

    results = {}
    for variant in ("staged", "fused"):
        xn, gn, bn = Node(x.copy(), name="x"), Node(gamma.copy(), name="gamma"), Node(
            beta.copy(), name="beta")
        if variant == "staged":
            out = staged_nodes(xn, gn, bn, spec)["out"]
        else:
            out = fused_node(fused_op, xn, gn, bn, spec)
        out.backward(dout)
        results[variant] = (out.data, xn.grad, gn.grad, bn.grad)

    x64, g64, b64 = x.astype(np.float64), gamma.astype(np.float64), beta.astype(np.float64)

    def forward(a: np.ndarray, g: np.ndarray, b: np.ndarray) -> np.ndarray:
        mean, var = statistics(a, spec)
        return normalize(a, g, b, mean, var, spec)

    numeric = (
        numerical_gradient(lambda a: forward(a, g64, b64), x64.copy(), dout, h),
        numerical_gradient(lambda g: forward(x64, g, b64), g64.copy(), dout, h),
        numerical_gradient(lambda b: forward(x64, g64, b), b64.copy(), dout, h),
    )
    # One measure for every column: the normwise relative error. The CS231n elementwise
    # rel_error breaks down at realistic sizes: among thousands of entries some gradient is
    # near zero by cancellation and carries a rounding error of the gradient's *scale*
    # (even the exact-arithmetic answer rounded to float64 fails it there).
    metric = "normwise relative error max |a-b| / max(|a|+|b|) over all entries"

    staged, fused = results["staged"], results["fused"]
    with np.errstate(invalid="ignore"):
        forward_diff = float(np.max(np.abs(staged[0] - fused[0]))) if x.size else 0.0
        scale = float(np.max(np.abs(fused[0]))) if x.size else 0.0
    report = NormReport(
        kind=spec.kind, shape=x.shape, dtype=str(dtype), reduce_axes=spec.reduce_axes,
        eps=spec.eps, metric=metric, forward_max_abs_diff=forward_diff,
        forward_scale=scale, tolerances=TOLERANCES[dtype],
    )
    for i, grad in enumerate(GRAD_NAMES, start=1):
        report.errors[grad] = {
            "staged~fused": scaled_error(staged[i], fused[i]),
            "staged~numeric": scaled_error(staged[i], numeric[i - 1]),
            "fused~numeric": scaled_error(fused[i], numeric[i - 1]),
        }
    return report


def compare_batchnorm(x: Any, gamma: Any, beta: Any, dout: Any = None, *, axis: Any = None,
                      eps: float = 1e-5, seed: int = 0, h: float = 1e-5) -> NormReport:
    """Batch norm staged vs fused vs numeric. x: (N, D) or (N, C, H, W); gamma, beta: (D,)/(C,).

    dout: the upstream gradient (random normal with `seed` when None). Returns a
    `NormReport`; `print(report)` shows the table, `report.ok` the verdict.
    """
    shape = np.shape(x)
    spec = batchnorm_spec(shape, axis, eps)
    return compare_norm(spec, FusedBatchNorm, x, gamma, beta, dout, seed=seed, h=h)


def compare_normalization(kind: str, x: Any, gamma: Any, beta: Any, dout: Any = None, *,
                          eps: float = 1e-5, groups: int | None = None, axis: Any = None,
                          seed: int = 0, h: float = 1e-5) -> NormReport:
    """Any normalization of the family (batch, spatial, layer, group) staged vs fused vs numeric.

    Shapes as for the matching `*_staged` function; `groups` is G for group norm.
    """
    spec = norm_spec(kind, np.shape(x), eps=eps, groups=groups, axis=axis)
    return compare_norm(spec, NORMS[kind], x, gamma, beta, dout, seed=seed, h=h)
