"""Staged vs fused vs finite differences for a normalization, as a report object."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..core.node import Node, as_float_array
from ..norm import (
    NORMS,
    TITLES,
    FusedBatchNorm,
    FusedNorm,
    NormSpec,
    batchnorm_spec,
    fused_node,
    norm_spec,
    staged_nodes,
    statistics,
)
from .gradcheck import EXTENDED, reference_gradient, scaled_error

__all__ = ["NormReport", "compare_batchnorm", "compare_normalization", "compare_norm", "TOLERANCES",
           "compare_cost", "format_bytes"]

# (staged vs fused, either vs numeric, forward relative to the output's scale). A gradient
# off by a relative r shows as r/2 in the normwise measure, so float32's 3e-5 fails a
# gradient 1e-4 away from the truth while float32 rounding (~1e-6 here) passes.
TOLERANCES = {
    np.dtype(np.float64): {"pair": 1e-10, "numeric": 1e-8, "forward": 1e-10},
    np.dtype(np.float32): {"pair": 3e-5, "numeric": 3e-5, "forward": 1e-4},
}
GRAD_NAMES = ("dx", "dgamma", "dbeta")
NUMERIC_COORDINATES = 100  # above this many entries an input is checked at sampled coordinates
COLUMNS = ("staged~fused", "staged~numeric", "fused~numeric")

# What a comparison costs. Peak memory measured with x (2000, 1000) float64: 209 bytes per
# value of x (the staged graph's ten stages and their gradients, the fused op, the numeric
# check's extended-precision forward passes); float32 needs less.
MEMORY_PER_VALUE = 216
# The numeric check runs six forward passes per checked coordinate (three steps, plus and
# minus) over the values the coordinate reaches (its statistic's for x, its feature's for
# gamma and beta); measured at about 50 ns per value and pass in extended precision. Above
# this many value evaluations it would run for minutes.
MAX_VALUE_PASSES = 2e9
PASSES_PER_COORDINATE = 6


def available_memory() -> int:
    """Bytes of memory available now (MemAvailable; else the physical memory)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return 8 << 30


def format_bytes(count: float) -> str:
    """1.5e9 -> '1.5 GB' (MB at least)."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if count >= size:
            return f"{count / size:.3g} {unit}"
    return f"{count / 1e6:.2g} MB"


def _cost(shape: tuple[int, ...], kind: str) -> tuple[int, float, float]:
    """(values of x, peak bytes, value evaluations of the numeric check) for x of `shape`."""
    values = math.prod(shape)
    per_sample = math.prod(shape[1:])
    params = per_sample if kind == "layer" else shape[1]
    # values one statistic takes (group norm's are at most a sample's)
    count = per_sample if kind in ("layer", "group") else values // max(1, params)
    reach = values // max(1, params)  # the outputs one entry of gamma or beta reaches
    work = PASSES_PER_COORDINATE * (min(values, NUMERIC_COORDINATES) * count
                                    + 2 * min(params, NUMERIC_COORDINATES) * reach)
    return values, float(values) * MEMORY_PER_VALUE, float(work)


def _one_two_five_below(n: int) -> int:
    # The largest of 1, 2, 5, 10, 20, 50, ... not above n: a suggestion a person would type.
    best = 1
    for power in range(len(str(n)) + 1):
        for lead in (1, 2, 5):
            if lead * 10 ** power <= n:
                best = max(best, lead * 10 ** power)
    return best


def compare_cost(shape: tuple[int, ...], kind: str = "batch",
                 memory: int | None = None) -> tuple[float, str | None, tuple[int, ...]]:
    """What comparing a normalization of x with this shape costs, before any array exists.

    Returns (estimated peak bytes, why it is too large or None, a shape that fits: the
    batch, then the last axis, cut to a round number). memory: the bytes it may use (half
    of what is available now when None).
    """
    shape = tuple(int(s) for s in shape)
    limit = available_memory() // 2 if memory is None else memory
    values, estimate, work = _cost(shape, kind)

    def fits(candidate: tuple[int, ...]) -> bool:
        _, need, evaluations = _cost(candidate, kind)
        return need <= limit and evaluations <= MAX_VALUE_PASSES

    if fits(shape):
        return estimate, None, shape
    suggestion = list(shape)
    for axis, smallest in ((0, min(2, shape[0])), (len(shape) - 1, 1)):
        while not fits(tuple(suggestion)) and suggestion[axis] > smallest:
            suggestion[axis] = max(smallest, _one_two_five_below(suggestion[axis] - 1))
    over = []
    if estimate > limit:
        over.append(f"half the memory available now is {format_bytes(limit)}")
    if work > MAX_VALUE_PASSES:
        over.append(f"more than {MAX_VALUE_PASSES:.0e} value evaluations would take many "
                    f"minutes")
    reason = (f"x {shape} has {values:.3g} values; compare needs about {format_bytes(estimate)} "
              f"and {work:.3g} value evaluations in its numeric check ({'; '.join(over)})")
    return estimate, reason, tuple(suggestion)


@dataclass
class NormReport:
    """Agreement of the staged graph, the fused op and central differences.

    errors[grad][column]: grad in dx/dgamma/dbeta, column in staged~fused,
    staged~numeric, fused~numeric. `ok` is False if any number exceeds its tolerance
    or is NaN.
    """

    kind: str  # batch, spatial, layer or group (`title` has the words)
    shape: tuple[int, ...]
    dtype: str
    reduce_axes: tuple[int, ...]
    eps: float
    metric: str
    forward_max_abs_diff: float
    forward_scale: float
    tolerances: dict[str, float]
    errors: dict[str, dict[str, float]] = field(default_factory=dict)
    numeric_note: str = ""
    # Said in words where a case is degenerate (one value per statistic).
    note: str = ""
    # Per gradient, the tolerances actually applied where the case demands more than
    # `tolerances` (see `raised_tolerances`), with the reason.
    raised: dict[str, tuple[float, float, str]] = field(default_factory=dict)

    @property
    def title(self) -> str:
        """The kind in words ("batch norm")."""
        return TITLES[self.kind]

    def limit(self, grad: str, column: str) -> float:
        """The tolerance applied to errors[grad][column]."""
        pair, numeric = self.tolerances["pair"], self.tolerances["numeric"]
        if grad in self.raised:
            pair, numeric = self.raised[grad][:2]
        return pair if column == "staged~fused" else numeric

    def failures(self) -> list[str]:
        """Human-readable list of what exceeded its tolerance (empty when ok)."""
        failed = []
        forward_tol = self.tolerances["forward"] * max(1.0, self.forward_scale)
        if not self.forward_max_abs_diff <= forward_tol:
            failed.append(f"forward max abs diff {self.forward_max_abs_diff:.3e} > {forward_tol:.1e}")
        for grad, row in self.errors.items():
            for column, error in row.items():
                tol = self.limit(grad, column)
                if not error <= tol:  # NaN fails too
                    failed.append(f"{grad} {column} {error:.3e} > {tol:.1e}")
        return failed

    @property
    def ok(self) -> bool:
        return not self.failures()

    def _repr_markdown_(self) -> str:
        """The report as a Markdown table (how Jupyter shows it)."""
        lines = [f"**{self.title}**: x {self.shape} {self.dtype}, reduced over axes "
                 f"{self.reduce_axes}, eps {self.eps:g}; forward max \\|staged - fused\\| = "
                 f"{self.forward_max_abs_diff:.3e}", "",
                 "| grad | " + " | ".join(COLUMNS) + " | tolerance |",
                 "|---|" + "---:|" * (len(COLUMNS) + 1)]
        for grad, row in self.errors.items():
            limits = f"{self.limit(grad, 'staged~fused'):.0e} / {self.limit(grad, 'fused~numeric'):.0e}"
            lines.append(f"| {grad} | " + " | ".join(f"{row[c]:.3e}" for c in COLUMNS)
                         + f" | {limits} |")
        failed = self.failures()
        lines += ["", *([f"Note: {self.note}.", ""] if self.note else []),
                  f"{self.metric}. " + (self.numeric_note.replace("numeric   ", "Numeric: ")
                                            + ". " if self.numeric_note else "")
                  + ("**verdict: ok**" if not failed else "**FAILED**: " + "; ".join(failed))]
        return "\n".join(lines)

    def __str__(self) -> str:
        lines = [
            f"{self.title}: x {self.shape} {self.dtype}, reduced over axes {self.reduce_axes}, "
            f"eps {self.eps:g}",
            f"forward   max |staged - fused| = {self.forward_max_abs_diff:.3e}",
            *([self.numeric_note] if self.numeric_note else []),
            *([f"note      {self.note}"] if self.note else []),
            f"error     {self.metric}",
            f"{'grad':<9} " + " ".join(f"{c:>15}" for c in COLUMNS),
        ]
        for grad, row in self.errors.items():
            lines.append(f"{grad:<9} " + " ".join(f"{row[c]:>15.3e}" for c in COLUMNS))
        tol = self.tolerances
        lines.append(f"tolerance staged~fused {tol['pair']:.0e}, vs numeric {tol['numeric']:.0e}")
        for grad, (pair, numeric, reason) in self.raised.items():
            lines.append(f"          {grad}: raised to {pair:.1e} and {numeric:.1e} ({reason})")
        failed = self.failures()
        lines.append("verdict   " + ("ok" if not failed else "FAILED: " + "; ".join(failed)))
        return "\n".join(lines)


def compare_norm(spec: NormSpec, fused_op: type[FusedNorm], x: Any, gamma: Any, beta: Any,
                 dout: Any = None, *, seed: int = 0, h: float = 1e-4,
                 progress: Callable[[int, int], None] | None = None) -> NormReport:
    """Run one normalization staged, fused and numerically and compare the gradients.

    The numeric gradients are central differences of the closed-form forward in extended
    precision with a Richardson step (`numeric_gradients`), so a float32 run is measured
    against a much more exact reference, and large inputs are checked at sampled
    coordinates. progress(done, total) is called as the numeric check goes. Every column is
    the normwise relative error (`scaled_error`).
    """
    x = as_float_array(x, "x")
    _, too_large, smaller = compare_cost(x.shape, spec.kind)
    if too_large is not None:
        raise ValueError(f"x: {too_large}; try a smaller batch, e.g. shape {smaller}")
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

    numeric, numeric_errors, coordinates, note = numeric_gradients(
        spec, x, gamma, beta, dout, h=h, seed=seed, progress=progress)
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
    report.numeric_note = note
    growth = conditioning(spec, x, gamma, dout)
    if spec.count == 1:
        # Not a gradient that vanishes by cancellation (as `conditioning` would read it):
        # x - mean is exactly 0, in every implementation, so dx is exactly 0 too.
        growth["dx"] = 1.0
        report.note = (f"one value per statistic (x {x.shape} reduced over axes "
                       f"{spec.reduce_axes}): x - mean is 0, so the output is beta and dx is "
                       f"exactly zero")
    for i, grad in enumerate(GRAD_NAMES, start=1):
        at = coordinates[i - 1]
        reference = numeric[i - 1].reshape(-1)[at]
        report.errors[grad] = {
            "staged~fused": scaled_error(staged[i], fused[i]),
            "staged~numeric": scaled_error(staged[i].reshape(-1)[at], reference),
            "fused~numeric": scaled_error(fused[i].reshape(-1)[at], reference),
        }
        raised = raised_tolerances(report.tolerances, np.dtype(dtype), growth[grad], reference,
                                   numeric_errors[i - 1].reshape(-1)[at])
        if raised is not None:
            report.raised[grad] = raised
    return report


def conditioning(spec: NormSpec, x: np.ndarray, gamma: np.ndarray, dout: np.ndarray
                 ) -> dict[str, float]:
    """How many times smaller each gradient is than the terms it is summed from.

    Rounding errors are relative to those terms, so a gradient that comes out tiny by
    cancellation (two values per statistic make dx nearly vanish) has only that many fewer
    correct digits, in any correct implementation.
    """
    x64 = spec.grouped(x.astype(np.float64))
    dout64 = dout.astype(np.float64)
    axes = spec.reduce_axes
    xmu = x64 - x64.mean(axis=axes, keepdims=True)
    ivar = 1 / np.sqrt((xmu * xmu).mean(axis=axes, keepdims=True) + spec.eps)
    xhat = xmu * ivar
    g = spec.grouped(dout64 * gamma.astype(np.float64).reshape(spec.param_bshape))
    mean_g = g.mean(axis=axes, keepdims=True)
    mean_gx = (g * xhat).mean(axis=axes, keepdims=True)
    dx = ivar * (g - mean_g - xhat * mean_gx)
    terms = ivar * (np.abs(g) + np.abs(mean_g) + np.abs(xhat * mean_gx))
    sum_axes = spec.param_sum_axes
    xhat_x = xhat.reshape(spec.x_shape)

    def ratio(size_of_terms: np.ndarray, result: np.ndarray) -> float:
        top = float(np.max(size_of_terms)) if size_of_terms.size else 0.0
        bottom = float(np.max(np.abs(result))) if result.size else 0.0
        return 1.0 if top == 0.0 else top / max(bottom, top * 1e-300)

    return {"dx": ratio(terms, dx),
            "dgamma": ratio(np.abs(dout64 * xhat_x).sum(axis=sum_axes),
                            (dout64 * xhat_x).sum(axis=sum_axes)),
            "dbeta": ratio(np.abs(dout64).sum(axis=sum_axes), dout64.sum(axis=sum_axes))}


ROUNDING_SLACK = 64  # rounding errors of a few dozen operations, each up to eps


def raised_tolerances(tolerances: dict[str, float], dtype: np.dtype, growth: float,
                      reference: np.ndarray, reference_error: np.ndarray
                      ) -> tuple[float, float, str] | None:
    """The tolerances this case needs, when more than the dtype's: (pair, numeric, reason).

    growth: `conditioning` of the gradient; reference, reference_error: the numeric gradient
    and its error estimate at the checked coordinates.
    """
    rounding = ROUNDING_SLACK * float(np.finfo(dtype).eps) * growth
    scale = 2 * float(np.max(np.abs(reference))) if reference.size else 0.0
    numeric_error = 3 * float(np.max(reference_error)) / scale if scale else 0.0
    pair = max(tolerances["pair"], rounding)
    numeric = max(tolerances["numeric"], rounding + numeric_error)
    if pair == tolerances["pair"] and numeric == tolerances["numeric"]:
        return None
    reasons = []
    if rounding > tolerances["pair"]:
        reasons.append(f"the gradient is {growth:.1e} times smaller than the terms it is "
                       f"summed from, so {dtype} rounding leaves fewer correct digits")
    if numeric_error > tolerances["numeric"] / 2:
        reasons.append(f"the finite differences' own error estimate is {numeric_error:.1e}")
    return pair, numeric, "; ".join(reasons) or "rounding and finite-difference error"


def numeric_gradients(spec: NormSpec, x: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
                      dout: np.ndarray, *, h: float = 1e-4, seed: int = 0,
                      progress: Callable[[int, int], None] | None = None
                      ) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray], str]:
    """dx, dgamma, dbeta by `reference_gradient` (extended precision, a Richardson step).

    Inputs with more than NUMERIC_COORDINATES entries are checked at that many coordinates
    drawn with `seed` (as the assignment's grad_check_sparse does). Each probe evaluates
    the forward only where the probed entry reaches (`_probes`): the difference of the
    other outputs is exactly zero, so leaving them out changes no digit and makes a probe
    cost one statistic's values, not all of x. Returns the gradients and their error
    estimates (NaN where not computed), the flat coordinates per gradient, and a line
    saying how they were computed.
    """
    arrays = [a.astype(EXTENDED) for a in (x, gamma, beta)]
    rng = np.random.default_rng(seed)
    coordinates = [np.arange(a.size) if a.size <= NUMERIC_COORDINATES
                   else np.sort(rng.choice(a.size, NUMERIC_COORDINATES, replace=False))
                   for a in arrays]
    probes = _probes(spec, *arrays, np.asarray(dout, EXTENDED))
    total, done = sum(len(c) for c in coordinates), 0
    numeric, errors = [], []
    for index, at in enumerate(coordinates):
        gradient = np.full(arrays[index].size, np.nan)
        error = np.full(arrays[index].size, np.nan)
        for chunk in np.array_split(at, max(1, len(at) // 20)):  # progress every ~20
            for flat in chunk:
                entries, forward, upstream, local = probes[index](int(flat))
                part, part_error = reference_gradient(forward, entries, upstream,
                                                      np.array([local]), h)
                gradient[flat] = part.reshape(-1)[local]
                error[flat] = part_error.reshape(-1)[local]
            done += len(chunk)
            if progress is not None:
                progress(done, total)
        numeric.append(gradient.reshape(arrays[index].shape))
        errors.append(error.reshape(arrays[index].shape))
    precision = "extended precision" if EXTENDED is not np.float64 else "float64"
    sampled = [f"{name} at {len(at)} of {a.size} coordinates" for name, at, a
               in zip(GRAD_NAMES, coordinates, arrays) if len(at) < a.size]
    note = f"numeric   central differences in {precision} with a Richardson step" + (
        "; " + ", ".join(sampled) + " (sampled)" if sampled else "")
    return numeric, errors, coordinates, note


Probe = Callable[[int], tuple[np.ndarray, Callable[[np.ndarray], np.ndarray], np.ndarray, int]]


def _probes(spec: NormSpec, x: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
            upstream: np.ndarray) -> tuple[Probe, Probe, Probe]:
    """For x, gamma and beta: flat index -> (the entries it is probed among, the forward of
    those entries to the outputs they reach, the upstream there, its index among them).

    An entry of x reaches the outputs of its own statistic (the values it is normalized
    with); an entry of gamma or beta reaches the outputs of its feature, whose xhat does not
    depend on it. Both forwards are the closed form of `statistics` and `normalize`.
    """
    shape = spec.grouped_shape or spec.x_shape
    x_grouped, upstream_grouped = x.reshape(shape), upstream.reshape(shape)
    # gamma and beta at every position of x, in the layout the statistics are taken in
    gamma_at = np.broadcast_to(gamma.reshape(spec.param_bshape), spec.x_shape).reshape(shape)
    beta_at = np.broadcast_to(beta.reshape(spec.param_bshape), spec.x_shape).reshape(shape)
    mean, var = statistics(x, spec)
    xhat = ((x_grouped - mean) / np.sqrt(var + spec.eps)).reshape(spec.x_shape)

    def x_probe(flat: int) -> Any:
        position = np.unravel_index(flat, shape)
        where = tuple(slice(None) if axis in spec.reduce_axes else at
                      for axis, at in enumerate(position))
        entries = x_grouped[where].copy()
        local = int(np.ravel_multi_index(
            tuple(at for axis, at in enumerate(position) if axis in spec.reduce_axes),
            entries.shape))
        scale, shift = gamma_at[where], beta_at[where]

        def forward(values: np.ndarray) -> np.ndarray:
            centred = values - values.mean()
            return centred / np.sqrt((centred * centred).mean() + spec.eps) * scale + shift
        return entries, forward, upstream_grouped[where], local

    def feature(flat: int) -> tuple[Any, ...]:
        position = np.unravel_index(flat, spec.param_bshape)
        return tuple(slice(None) if size == 1 else at
                     for at, size in zip(position, spec.param_bshape))

    def gamma_probe(flat: int) -> Any:
        where, shift = feature(flat), beta.reshape(-1)[flat]
        return (gamma.reshape(-1)[flat:flat + 1].copy(),
                lambda value: xhat[where] * value[0] + shift, upstream[where], 0)

    def beta_probe(flat: int) -> Any:
        where, scale = feature(flat), gamma.reshape(-1)[flat]
        return (beta.reshape(-1)[flat:flat + 1].copy(),
                lambda value: xhat[where] * scale + value[0], upstream[where], 0)

    return x_probe, gamma_probe, beta_probe


def compare_batchnorm(x: Any, gamma: Any, beta: Any, dout: Any = None, *, axis: Any = None,
                      eps: float = 1e-5, seed: int = 0, h: float = 1e-4) -> NormReport:
    """Batch norm staged vs fused vs numeric. x: (N, D) or (N, C, H, W); gamma, beta: (D,)/(C,).

    dout: the upstream gradient (random normal with `seed` when None). Returns a
    `NormReport`; `print(report)` shows the table, `report.ok` the verdict.
    """
    shape = np.shape(x)
    spec = batchnorm_spec(shape, axis, eps)
    return compare_norm(spec, FusedBatchNorm, x, gamma, beta, dout, seed=seed, h=h)


def compare_normalization(kind: str, x: Any, gamma: Any, beta: Any, dout: Any = None, *,
                          eps: float = 1e-5, groups: int | None = None, axis: Any = None,
                          seed: int = 0, h: float = 1e-4,
                          progress: Callable[[int, int], None] | None = None) -> NormReport:
    """Any normalization of the family (batch, spatial, layer, group) staged vs fused vs numeric.

    Shapes as for the matching `*_staged` function; `groups` is G for group norm.
    """
    spec = norm_spec(kind, np.shape(x), eps=eps, groups=groups, axis=axis)
    return compare_norm(spec, NORMS[kind], x, gamma, beta, dout, seed=seed, h=h,
                        progress=progress)
