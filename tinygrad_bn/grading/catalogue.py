"""The catalogue of correct quantities, and of known wrong ones, for one normalization case.

For inputs x, gamma, beta, dout every value a correct implementation may hold on the way is
listed: the staged graph's forward stages (mu, xmu, sq, var, var_eps, sqrtvar, ivar, xhat,
gammax, out), the backward's partial and total gradients per stage (dxhat, divar, dsqrtvar,
dvar, dsq, both branches into xmu, dxmu1 = dxhat * ivar and dxmu2 = 2 * xmu * dsq, dmu, both
branches into x, dx1 = dxmu and dx2 = dmu / N, dx, dgamma, dbeta), the closed form's terms
(sum(dxhat), sum(dxhat * xhat), N * dxhat - sum(dxhat) - xhat * sum(dxhat * xhat)) and the
running statistics. Beside them the known wrong variants: eps outside the square root or
left out, 1/(N-1), statistics over all axes or the wrong axis, a reshape without a
transpose, a missing 2, a sign, a dropped branch, only the Jacobian's diagonal, gamma taken
out of a per-sample sum, reversed momentum.

`match` tells which of them a student's array equals, up to the layouts a student may
choose: keepdims or not, a transpose (layer norm done on x.T), (N*H*W, C) for spatial
batch norm, a statistic broadcast to x's shape, and a scalar factor N or 1/N.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..norm import NormSpec
from .agree import TOLERANCE, agrees

__all__ = ["Quantity", "Match", "Catalogue", "build_catalogue", "build_test_catalogue",
           "MATCH_TOLERANCE"]

MATCH_TOLERANCE = TOLERANCE  # the verdict's own notion of agreement (`agree.py`)


@dataclass
class Quantity:
    """One entry. value: in x's layout when `full`, else flattened (a statistic or a
    parameter-shaped gradient); correct: False for a known wrong variant, whose `meaning`
    says what is wrong and `stage` names the correct quantity it stands in for."""

    name: str
    value: np.ndarray
    formula: str
    full: bool
    correct: bool = True
    partial: bool = False
    stage: str = ""
    meaning: str = ""
    missing: str = ""  # for a dropped branch: the correct partial quantity left out
    given: bool = False  # an input (gamma, beta, dout): right to hold, no stage of its own
    source: np.ndarray | None = field(default=None, repr=False)  # the misshapen input it
    # comes from (x.reshape(-1, C)): the line that makes it is where the departure is
    slip: str = ""  # a known slip's name ("running-var-with-std"), for a variant
    count: int | None = None  # a count slip: the number the student divides by instead

    def __post_init__(self) -> None:
        self.stage = self.stage or self.name


@dataclass
class Match:
    """How a student's array relates to one catalogue entry: `factor` is 1 for equality,
    N or 1/N for the harmless scalings, anything else for a scaled (wrong) value;
    `arrangement` True when only the order of the values differs."""

    quantity: Quantity
    factor: float = 1.0
    arrangement: bool = False
    by_count: bool = False  # factor is N or 1/N, a scaling correct code may apply later
    part: bool = False  # only some of the quantity's values (a slice a loop fills, a group)

    @property
    def correct(self) -> bool:
        return self.quantity.correct and not self.arrangement and (
            self.factor == 1.0 or self.by_count)


@dataclass
class Catalogue:
    """The entries for one case, and the spec's shapes needed to match layouts."""

    spec: NormSpec
    quantities: list[Quantity] = field(default_factory=list)
    _index: _PartIndex | None = field(default=None, repr=False)

    def correct(self) -> list[Quantity]:
        return [q for q in self.quantities if q.correct]

    def stages(self) -> list[Quantity]:
        """The correct quantities that are stages of the computation (not the given inputs)."""
        return [q for q in self.quantities if q.correct and not q.given]

    def named(self, name: str) -> Quantity | None:
        for quantity in self.quantities:
            if quantity.correct and quantity.name == name:
                return quantity
        return None

    def match(self, value: np.ndarray) -> list[Match]:
        """Every entry `value` equals (correct ones first), up to the harmless layouts;
        failing that, the correct entries it is a scalar multiple of or a rearrangement of."""
        value = np.asarray(value, dtype=np.float64)
        if value.size == 0 or not np.all(np.isfinite(value)):
            return []
        forms = _forms(value, self.spec)
        found: list[Match] = []
        for quantity in self.quantities:
            for form in forms[quantity.full]:
                if form.shape != quantity.value.shape:
                    continue
                if _close(form, quantity.value):
                    found.append(Match(quantity))
                    break
                n = self.spec.count
                if quantity.correct and (_close(form, n * quantity.value)
                                         or _close(form, quantity.value / n)):
                    found.append(Match(quantity, factor=n if _close(form, n * quantity.value)
                                       else 1 / n, by_count=True))
                    break
        if found:
            found.sort(key=lambda m: (not m.quantity.correct, m.quantity.partial))
            return found
        for quantity in self.correct():
            for form in forms[quantity.full]:
                if form.shape != quantity.value.shape:
                    continue
                factor = _factor(form, quantity.value)
                if factor is not None:
                    found.append(Match(quantity, factor=factor))
                    break
                if quantity.full and _close(np.sort(form.ravel()), np.sort(quantity.value.ravel())):
                    found.append(Match(quantity, arrangement=True))
                    break
        return found or self._parts(value)

    def _parts(self, value: np.ndarray) -> list[Match]:
        """The entries whose values include every nonzero value of `value`: a slice of a
        quantity (x[:, c], one group), or an array a loop is still filling (zeros elsewhere)."""
        values = value.ravel()
        filled = values[values != 0]
        if filled.size == 0 or (filled.size == 1 and abs(filled[0] - round(filled[0], 6)) < 1e-12):
            return []  # nothing yet, or a round constant (1.0, 0.5, N) that matches by chance
        if self._index is None:
            self._index = _PartIndex(self.quantities)
        found = []
        for quantity, ordered, tolerance in self._index.holding(filled[0]):
            if filled.size >= ordered.size and values.size == filled.size:
                continue  # as many values as the whole: not a part (matched above or not)
            place = np.clip(np.searchsorted(ordered, filled), 1, max(ordered.size - 1, 1))
            nearest = np.abs(ordered[place - 1] - filled)
            if ordered.size > 1:
                nearest = np.minimum(nearest, np.abs(ordered[np.minimum(place, ordered.size - 1)]
                                                     - filled))
            if np.all(nearest <= tolerance):
                found.append(Match(quantity, part=True))
        found.sort(key=lambda m: (not m.quantity.correct, m.quantity.partial, m.quantity.given))
        return found


class _PartIndex:
    """Every entry's values in one sorted array, to find the few entries holding a value."""

    def __init__(self, quantities: list[Quantity]) -> None:
        self.entries = [(q, np.sort(q.value.ravel()),
                         2 * MATCH_TOLERANCE * float(np.max(np.abs(q.value))))
                        for q in quantities]
        values = np.concatenate([e[1] for e in self.entries]) if self.entries else np.zeros(0)
        owners = np.concatenate([np.full(e[1].size, i) for i, e in enumerate(self.entries)]) \
            if self.entries else np.zeros(0, int)
        order = np.argsort(values, kind="stable")
        self.values, self.owners = values[order], owners[order]
        self.widest = max((e[2] for e in self.entries), default=0.0)

    def holding(self, value: float) -> list[tuple[Quantity, np.ndarray, float]]:
        lo, hi = np.searchsorted(self.values, [value - self.widest, value + self.widest])
        owners = sorted(set(self.owners[lo:hi].tolist()))
        return [self.entries[i] for i in owners
                if np.min(np.abs(self.entries[i][1] - value)) <= self.entries[i][2]]


def _norm(a: np.ndarray) -> float:
    return float(np.linalg.norm(a))


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    return _norm(b) > 0 and agrees(a, b)


def _factor(a: np.ndarray, b: np.ndarray) -> float | None:
    """k when a = k * b (k not within tolerance of 1 or 0), else None."""
    bb = float(np.vdot(b, b))
    if bb == 0:
        return None
    k = float(np.vdot(a, b)) / bb
    if abs(k - 1) <= 1e-6 or abs(k) <= 1e-6:
        return None
    return k if agrees(a, k * b) else None


def _merges(shape: tuple[int, ...], moved: tuple[int, ...]) -> bool:
    """Whether `shape` is `moved` with some neighbouring axes merged (size-1 axes aside)."""
    def bounds(dims: tuple[int, ...]) -> set[int]:
        return set(np.cumprod([d for d in dims if d != 1]).tolist())
    return bool(shape) and bounds(shape) <= bounds(moved)


def _forms(value: np.ndarray, spec: NormSpec) -> dict[bool, list[np.ndarray]]:
    """The student's array seen in x's layout (full) and flattened (statistics, parameters)."""
    x_shape = spec.x_shape
    size = int(np.prod(x_shape))
    full: list[np.ndarray] = []
    flat: list[np.ndarray] = [value.ravel()]
    if value.size == size:
        full.append(value.reshape(x_shape))
        if value.ndim == 2 and len(x_shape) == 2:
            full.append(value.T.reshape(x_shape))
        if len(x_shape) == 4:
            # any order of x's axes, neighbours possibly merged: (N*H*W, C), (C, N*H*W),
            # (C, N, H*W), (N, H, W, C), ...
            for perm in itertools.permutations(range(4)):
                if perm == (0, 1, 2, 3):
                    continue
                moved = tuple(x_shape[p] for p in perm)
                if _merges(value.shape, moved):
                    full.append(value.reshape(moved).transpose(np.argsort(perm)))
        # A statistic broadcast to x's shape counts as the statistic.
        for form in list(full):
            grouped = spec.grouped(form)
            first = grouped.mean(axis=spec.reduce_axes, keepdims=True)
            if _norm(grouped - first) <= 1e-12 * max(_norm(grouped), 1e-300):
                flat.append(first.ravel())
            first = form.mean(axis=spec.param_sum_axes, keepdims=True)
            if _norm(form - first) <= 1e-12 * max(_norm(form), 1e-300):
                flat.append(first.ravel())
    return {True: full, False: flat}


def build_catalogue(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, dout: np.ndarray,
                    spec: NormSpec, momentum: float | None = None,
                    start: dict[str, np.ndarray] | None = None) -> Catalogue:
    """Every correct quantity and known wrong variant for these inputs (float64).
    momentum, start: the running statistics' momentum and values before the step."""
    x, dout = (np.asarray(a, np.float64) for a in (x, dout))
    g = np.asarray(gamma, np.float64).reshape(spec.param_bshape)
    b = np.asarray(beta, np.float64).reshape(spec.param_bshape)
    axes, n, eps, shape = spec.reduce_axes, spec.count, spec.eps, spec.x_shape
    sum_axes = spec.param_sum_axes
    cat = Catalogue(spec)

    def full(a: np.ndarray) -> np.ndarray:
        return np.broadcast_to(a, spec.grouped(x).shape).reshape(shape).copy()

    def add(name: str, value: np.ndarray, formula: str, is_full: bool, **extra: object) -> None:
        value = np.asarray(value, np.float64)
        value = full(value) if is_full and value.shape != shape else value.reshape(-1) \
            if not is_full else value
        if _norm(value) <= 1e-9 * np.sqrt(value.size) * max(_norm(x) / np.sqrt(x.size), 1.0):
            return  # (nearly) zero: it would match any small number
        is_variant = not extra.get("correct", True)
        for other in cat.quantities:  # a variant equal to its correct stage is no variant
            if other.full == is_full and other.value.shape == value.shape and \
                    _close(value, other.value) and (
                        (is_variant and other.correct and other.name == extra.get("stage"))
                        or other.correct == (not is_variant) and (
                            not is_variant or other.stage == extra.get("stage"))):
                return
        cat.quantities.append(Quantity(name, value, formula, is_full, **extra))  # type: ignore[arg-type]

    def sum_(a: np.ndarray) -> np.ndarray:
        return a.sum(axis=axes, keepdims=True)

    xs = spec.grouped(x)
    grouped_gamma = spec.grouped(np.broadcast_to(g, shape))
    m_ = COUNT_NAMES.get(spec.kind, "N")  # what the count per statistic is called
    # forward stages
    mu = xs.mean(axis=axes, keepdims=True)
    xmu = xs - mu
    sq = xmu ** 2
    var = sq.mean(axis=axes, keepdims=True)
    var_eps = var + eps
    sqrtvar = np.sqrt(var_eps)
    ivar = 1 / sqrtvar
    xhat = xmu * ivar
    gammax = g * xhat.reshape(shape)
    out = gammax + b
    for name, value, formula, is_full in (
            ("x", xs, "the input", True), ("mu", mu, "mean(x)", False),
            ("xmu", xmu, "x - mu", True), ("sq", sq, "xmu**2", True),
            ("var", var, "mean(sq)", False), ("var_eps", var_eps, "var + eps", False),
            ("sqrtvar", sqrtvar, "sqrt(var + eps)", False), ("ivar", ivar, "1 / sqrtvar", False),
            ("xhat", xhat, "xmu * ivar", True), ("gammax", gammax, "gamma * xhat", True),
            ("out", out, "gammax + beta", True)):
        add(name, value, formula, is_full)
    for name, value, is_full in (("gamma", g, False), ("beta", b, False), ("dout", dout, True)):
        add(name, value, f"the input {name}", is_full, given=True)
    # backward: partial and total gradients, stage by stage
    dxhat = spec.grouped(dout * g)
    divar = sum_(dxhat * xmu)
    dxmu1 = dxhat * ivar
    dsqrtvar = -divar / sqrtvar ** 2
    dvar = 0.5 * dsqrtvar / sqrtvar
    dsq = dvar / n
    dxmu2 = 2 * xmu * dsq
    dxmu = dxmu1 + dxmu2
    dmu = -sum_(dxmu)
    dx2 = dmu / n
    dx = dxmu + dx2
    sum_dxhat, sum_dxhat_xhat = sum_(dxhat), sum_(dxhat * xhat)
    bracket = n * dxhat - sum_dxhat - xhat * sum_dxhat_xhat
    dgamma = (dout * xhat.reshape(shape)).sum(axis=sum_axes)
    dbeta = dout.sum(axis=sum_axes)
    for name, value, formula, is_full, partial in (
            ("dbeta", dbeta, "sum(dout) over the batch axes", False, False),
            ("dgamma", dgamma, "sum(dout * xhat) over the batch axes", False, False),
            ("dxhat", dxhat, "dout * gamma", True, False),
            ("divar", divar, "sum(dxhat * xmu)", False, False),
            ("dxmu1", dxmu1, "dxhat * ivar (the branch through xhat)", True, True),
            ("dsqrtvar", dsqrtvar, "-divar / sqrtvar**2", False, False),
            ("dvar", dvar, "-0.5 * sum(dxhat * xmu) * (var + eps)**-1.5", False, False),
            ("dsq", dsq, f"dvar / {m_}", False, False),
            ("dxmu2", dxmu2, "2 * xmu * dsq (the branch through the variance)", True, True),
            ("dxmu", dxmu, "dxmu1 + dxmu2", True, False),
            ("dmu", dmu, "-sum(dxmu)", False, False),
            ("dx2", dx2, f"dmu / {m_} (the branch through mu)", False, True),
            ("dx", dx, f"dxmu + dmu / {m_}", True, False),
            ("sum_dxhat", sum_dxhat, "sum(dxhat)", False, True),
            ("sum_dxhat_xhat", sum_dxhat_xhat, "sum(dxhat * xhat)", False, True),
            ("bracket", bracket, f"{m_} * dxhat - sum(dxhat) - xhat * sum(dxhat * xhat)", True,
             True)):
        add(name, value, formula, is_full, partial=partial)
    add("dmu1", -sum_dxhat * ivar, "-sum(dxhat) * ivar", False, partial=True)

    def variant(name: str, value: np.ndarray, is_full: bool, stage: str, meaning: str,
                missing: str = "", source: np.ndarray | None = None, slip: str = "",
                count: int | None = None) -> None:
        add(name, value, meaning, is_full, correct=False, stage=stage, meaning=meaning,
            missing=missing, source=source, slip=slip, count=count)

    # forward variants: the chain from a wrong statistic on
    def chain(tag: str, mean: np.ndarray, center: np.ndarray, std: np.ndarray, meaning: str,
              variance: np.ndarray | None = None, reshape_back: bool = True) -> None:
        if variance is not None:
            variant(f"var[{tag}]", variance, False, "var", meaning)
        if mean is not None:
            variant(f"mu[{tag}]", mean, False, "mu", meaning)
        variant(f"sqrtvar[{tag}]", std, False, "sqrtvar", meaning)
        variant(f"ivar[{tag}]", 1 / std, False, "ivar", meaning)
        variant(f"xmu[{tag}]", center, True, "xmu", meaning)
        normalized = (center / std).reshape(shape)
        variant(f"xhat[{tag}]", normalized, True, "xhat", meaning)
        variant(f"out[{tag}]", g * normalized + b, True, "out", meaning)

    chain("unbiased", None, xmu, np.sqrt(var * n / max(n - 1, 1) + eps),
          "the unbiased variance 1/(N-1) where normalization uses the biased 1/N",
          var * n / max(n - 1, 1))
    chain("eps outside", None, xmu, np.sqrt(var) + eps,
          "eps added outside the square root; it belongs inside, sqrt(var + eps)")
    chain("no eps", None, xmu, np.sqrt(var), "eps left out of sqrt(var + eps)")
    chain("no sqrt", None, xmu, var + eps, "var + eps without the square root")
    all_mean, all_var = xs.mean(), xs.var()
    chain("all axes", np.array([all_mean]), xs - all_mean, np.sqrt(all_var + eps) + 0 * mu,
          "statistics over all of x instead of per feature", np.array([all_var]))
    # statistics over only some of the axes normalization averages over (a loop over the
    # channels or the groups handing each slice to a 2-D helper that reduces one axis of it)
    names = _axis_names(spec)
    for size in range(1, len(axes)):
        for some in itertools.combinations(axes, size):
            meaning = (f"statistics over {_listed([names[a] for a in some])} only; "
                       f"{spec.title} averages over {_listed([names[a] for a in axes])}")
            sub_mean = xs.mean(axis=some, keepdims=True)
            sub_var = xs.var(axis=some, keepdims=True)
            tag = "axes " + ",".join(map(str, some))
            chain(tag, sub_mean, xs - sub_mean, np.sqrt(sub_var + eps), meaning, sub_var)
            sub_ivar = 1 / np.sqrt(sub_var + eps)
            sub_xhat = (xs - sub_mean) * sub_ivar
            count = int(np.prod([xs.shape[a] for a in some]))
            sub_dx = (count * dxhat - dxhat.sum(axis=some, keepdims=True) - sub_xhat * (
                dxhat * sub_xhat).sum(axis=some, keepdims=True)) * sub_ivar / count
            variant(f"dx[{tag}]", sub_dx, True, "dx", meaning)
            variant(f"dgamma[{tag}]", (dout * sub_xhat.reshape(shape)).sum(axis=sum_axes),
                    False, "dgamma", meaning)
    if len(shape) == 2:  # the other axis
        other = 1 - axes[0]
        om = x.mean(axis=other, keepdims=True)
        ov = x.var(axis=other, keepdims=True)
        variant("mu[wrong axis]", om, False, "mu", f"the mean over axis {other}, not {axes[0]}")
        variant("var[wrong axis]", ov, False, "var", f"the variance over axis {other}, not {axes[0]}")
        chain("wrong axis", None, x - om, np.sqrt(ov + eps),
              f"statistics over axis {other}; this normalization reduces axis {axes[0]}")
    if spec.kind == "spatial":
        n_, c, h, w = shape
        flat = x.reshape(-1, c)  # without the transpose to (N, H, W, C) first
        fm, fv = flat.mean(axis=0), flat.var(axis=0)
        meaning = ("x reshaped to (N*H*W, C) without moving C last first (transpose(0, 2, 3, 1)): "
                   "each column mixes channels")
        variant("mu[reshape]", fm, False, "mu", meaning, source=flat)
        variant("var[reshape]", fv, False, "var", meaning, source=flat)
        normalized = ((flat - fm) / np.sqrt(fv + eps))
        variant("xhat[reshape]", normalized.reshape(shape), True, "xhat", meaning, source=flat)
        variant("out[reshape]", (normalized * g.reshape(-1) + b.reshape(-1)).reshape(shape),
                True, "out", meaning, source=flat)
    variant("out[swapped]", b * xhat.reshape(shape) + g, True, "out", "gamma and beta swapped")
    variant("out[beta inside]", g * (xhat.reshape(shape) + b), True, "out",
            "beta added before the scaling: gamma * (xhat + beta) scales the shift by gamma too; "
            "the output is gamma * xhat + beta", slip="beta-inside-scaling")
    # running statistics
    if momentum is not None and start:
        batch = {"running_mean": mu, "running_var": var}
        for key, stat in batch.items():
            before = np.asarray(start[key], np.float64).reshape(stat.shape)
            add(key, momentum * before + (1 - momentum) * stat,
                f"momentum * {key} + (1 - momentum) * batch statistic", False)
            variant(f"{key}[reversed]", (1 - momentum) * before + momentum * stat, False, key,
                    f"the momentum used the wrong way round: the assignment's convention is "
                    f"{key} = momentum * {key} + (1 - momentum) * batch statistic")
            add(f"{key}_before", before, f"{key} as bn_param held it before the step", False,
                given=True)
        before = np.asarray(start["running_var"], np.float64).reshape(var.shape)
        for slip in RUNNING_SLIPS:
            variant(f"running_var[{slip.name}]", momentum * before + (1 - momentum) * slip.value(
                var=var, eps=eps, n=n), False, "running_var", slip.reason, slip=slip.name)
        variant("running_var[unbiased]", momentum * before + (1 - momentum) * var * n / max(n - 1, 1),
                False, "running_var", "the unbiased variance 1/(N-1) in the running variance; "
                "batch norm keeps the biased one (1/N)")
        variant("running_var[eps]", momentum * before + (1 - momentum) * var_eps, False,
                "running_var", "var + eps kept as the running variance; keep var itself")
    # backward variants
    def dx_from(branch: np.ndarray) -> np.ndarray:
        return branch - branch.mean(axis=axes, keepdims=True)

    for k, meaning in ((0.0, "the branch through the variance (dxmu2 = 2 * xmu * dsq) left out"),
                       (0.5, "a missing 2 in d(xmu**2) = 2 * xmu"),
                       (2.0, "a factor 2 too many in the branch through the variance"),
                       (-1.0, "the branch through the variance with its sign flipped"),
                       (n / max(n - 1, 1), "1/(N-1) in the variance's derivative where the "
                                           "biased variance has 1/N")):
        missing = "dxmu2" if k == 0 else ""
        variant(f"dxmu[{k:g}]", dxmu1 + k * dxmu2, True, "dxmu", meaning, missing)
        variant(f"dx[{k:g}]", dx_from(dxmu1 + k * dxmu2), True, "dx", meaning, missing)
    variant("dx[no mu]", dxmu, True, "dx", "the branch through mu (dx2 = dmu / N) left out", "dx2")
    variant("dx[mu sign]", dxmu - dx2, True, "dx", "the branch through mu with its sign flipped")
    diag = dxhat * ivar * ((1 - 1 / n) - xhat ** 2 / n)
    variant("dx[diagonal]", diag, True, "dx",
            "only the diagonal of the Jacobian dxhat_i/dx_i; every x_j moves every xhat_i "
            "through mu and var")
    for tag, std, meaning in (("eps outside", np.sqrt(var) + eps,
                               "sqrt(var) + eps where sqrt(var + eps) belongs"),
                              ("no eps", np.sqrt(var), "eps left out of sqrt(var + eps)")):
        normalized = xmu / std
        variant(f"dxmu1[{tag}]", dxhat / std, True, "dxmu1", meaning)
        variant(f"dx[{tag}]", (n * dxhat - sum_(dxhat) - normalized * sum_(dxhat * normalized))
                / (n * std), True, "dx", meaning)
    # gamma pulled out of a sum that runs along gamma's own axis (layer and group norm)
    dout_g = spec.grouped(dout)
    out_sum = grouped_gamma * sum_(dout_g)
    out_sum_xhat = grouped_gamma * sum_(dout_g * xhat)
    meaning = ("gamma taken out of a sum over the features, sum(dout * gamma) = gamma * sum(dout), "
               "but gamma varies along that sum")
    variant("sum_dxhat[gamma out]", out_sum, True, "sum_dxhat", meaning)
    variant("sum_dxhat_xhat[gamma out]", out_sum_xhat, True, "sum_dxhat_xhat", meaning)
    variant("dx[gamma out]", (n * dxhat - out_sum - xhat * out_sum_xhat) * ivar / n, True, "dx",
            meaning)
    variant("dx[gamma out 1]", (n * dxhat - out_sum - xhat * sum_dxhat_xhat) * ivar / n, True,
            "dx", meaning)
    variant("dx[gamma out 2]", (n * dxhat - sum_dxhat - xhat * out_sum_xhat) * ivar / n, True,
            "dx", meaning)
    if len(shape) == 2:
        other = 1 - axes[0]
        wrong = (n * dxhat - dxhat.sum(axis=other, keepdims=True)
                 - xhat * (dxhat * xhat).sum(axis=other, keepdims=True)) * ivar / n
        variant("dx[wrong axis]", wrong, True, "dx", f"the closed form's sums over axis {other}; "
                f"they run over axis {axes[0]}")
    if len(shape) == 2:  # two slips at once in the closed form's two sums
        other = 1 - axes[0]
        first = (("", sum_dxhat), ("gamma taken out of sum(dout * gamma)", out_sum),
                 (f"sum(dxhat) over axis {other}", dxhat.sum(axis=other, keepdims=True)))
        second = (("", sum_dxhat_xhat),
                  ("gamma taken out of sum(dout * gamma * xhat)", out_sum_xhat),
                  (f"sum(dxhat * xhat) over axis {other}",
                   (dxhat * xhat).sum(axis=other, keepdims=True)))
        for (slip_a, term_a), (slip_b, term_b) in itertools.product(first, second):
            if slip_a and slip_b:
                variant(f"dx[{slip_a}; {slip_b}]", (n * dxhat - term_a - xhat * term_b) * ivar / n,
                        True, "dx", f"two slips at once in the closed form: {slip_a} and "
                        f"{slip_b} (the sums run over axis {axes[0]}, gamma varies along it)")
    # x where the centred xmu = x - mu belongs, in the variance's branch
    meaning = "x where the centred x - mu belongs, in the branch through the variance"
    raw = dxhat * ivar - ivar ** 3 * sum_(dxhat * xs) * xs / n - sum_dxhat * ivar / n
    variant("dx[x for xmu]", raw, True, "dx", meaning)
    variant("dx[x for xmu, staged]", dx_from(dxhat * ivar - ivar ** 3 * sum_(dxhat * xs) * xs / n),
            True, "dx", meaning)
    for slip in DVAR_SLIPS:
        variant(f"dvar[{slip.name}]", 0.5 * dsqrtvar / slip.value(var=var, eps=eps, n=n), False,
                "dvar", slip.reason, slip=slip.name)
    _closed_form_slips(variant, spec, dxhat, xhat, ivar, sum_dxhat, sum_dxhat_xhat, dxmu1, xmu,
                       dvar, sum_)
    variant("dgamma[no xhat]", dbeta, False, "dgamma", "dgamma = sum(dout): the factor xhat is missing")
    variant("dgamma[x]", (dout * x).sum(axis=sum_axes), False, "dgamma",
            "dgamma = sum(dout * x): use the normalized xhat, not x")
    return cat


# What the number of values per statistic is called, per normalization.
COUNT_NAMES = {"batch": "N", "layer": "D", "spatial": "N*H*W", "group": "(C/G)*H*W"}


@dataclass(frozen=True)
class Slip:
    """A known slip as data: its name, the reason in words, and how the wrong value is made
    (from the correct statistics var, eps and the count n)."""

    name: str
    reason: str
    value: Callable[..., np.ndarray]


# In the running variance: the standard deviation averaged where the variance belongs.
RUNNING_SLIPS = (
    Slip("running-var-with-std", "the running variance updated with the standard deviation "
         "sqrt(var + eps); it is an average of variances: use var",
         lambda var, eps, n: np.sqrt(var + eps)),
    Slip("running-var-with-std-no-eps", "the running variance updated with the standard "
         "deviation sqrt(var); it is an average of variances: use var",
         lambda var, eps, n: np.sqrt(var)),
)

# In dvar = -0.5 * divar / sqrt(var + eps)**3 = 0.5 * dsqrtvar / sqrt(var + eps): what the
# student divides dsqrtvar by instead of sqrt(var + eps) (times 2).
DVAR_SLIPS = (
    Slip("dvar-std-for-var", "the standard deviation where the variance belongs: dvar = 0.5 * "
         "dsqrtvar / sqrt(var + eps), and this line takes the square root of sqrtvar + eps",
         lambda var, eps, n: np.sqrt(np.sqrt(var + eps) + eps)),
    Slip("dvar-std-for-var", "the standard deviation where the variance belongs: dvar = -0.5 * "
         "divar * (var + eps)**-1.5, and this line raises sqrtvar + eps to the power -1.5",
         lambda var, eps, n: (np.sqrt(var + eps) + eps) ** 1.5 / (var + eps)),
    Slip("dvar-eps-outside-sqrt", "eps outside the square root in dvar: 0.5 / (sqrt(var) + eps) "
         "where 0.5 / sqrt(var + eps) belongs", lambda var, eps, n: np.sqrt(var) + eps),
    Slip("dvar-no-eps", "eps left out of dvar: 0.5 / sqrt(var) where 0.5 / sqrt(var + eps) "
         "belongs", lambda var, eps, n: np.sqrt(var)),
)


def _other_counts(spec: NormSpec) -> list[tuple[int, str]]:
    """Numbers a student may divide by where the count per statistic belongs, named."""
    shape = spec.x_shape
    if len(shape) == 2:
        return [(shape[0], "N")] if spec.kind == "layer" else [(shape[1], "D")]
    counts = [(shape[0], "N"), (shape[2] * shape[3], "H*W")]
    if spec.kind == "group":
        counts.append((shape[0] * shape[2] * shape[3], "N*H*W"))
    return [(m, label) for m, label in counts if m != spec.count]


def _closed_form_slips(variant: Callable[..., None], spec: NormSpec, dxhat: np.ndarray,
                       xhat: np.ndarray, ivar: np.ndarray, sum_dxhat: np.ndarray,
                       sum_dxhat_xhat: np.ndarray, dxmu1: np.ndarray, xmu: np.ndarray,
                       dvar: np.ndarray, sum_: Callable[[np.ndarray], np.ndarray]) -> None:
    """dx = (M * dxhat - sum(dxhat) - xhat * sum(dxhat * xhat)) * ivar / M with a slip in
    the count M or in either sum (no axis: one number; left out: the terms themselves), one
    or several at once; and the staged form with another count."""
    n, title = spec.count, spec.title
    m_ = COUNT_NAMES.get(spec.kind, "N")
    over = "the batch" if spec.kind in ("batch", "spatial") else "each statistic's values"
    firsts = (("", sum_dxhat),
              (f"np.sum(dxhat) without an axis adds all {dxhat.size} entries into one number; "
               f"the closed form needs one sum per statistic, over {over}", dxhat.sum()),
              (f"the sum of dxhat over {over} left out (dxhat itself where sum(dxhat) belongs)",
               dxhat))
    seconds = (("", sum_dxhat_xhat),
               (f"np.sum(dxhat * xhat) without an axis adds all {dxhat.size} entries into one "
                f"number; the closed form needs one sum per statistic, over {over}",
                (dxhat * xhat).sum()),
               (f"the sum of dxhat * xhat over {over} left out (xhat * (dxhat * xhat) where "
                f"xhat * sum(dxhat * xhat) belongs)", dxhat * xhat))
    counts = [(n, "", "")] + [
        (m, f"{label} = {m} where {m_} = {n} belongs: {title} averages over {n} values per "
            f"statistic", label) for m, label in _other_counts(spec)]
    for (first, term1), (second, term2), (m, count_text, _label) in itertools.product(
            firsts, seconds, counts):
        slips = [t for t in (count_text, first, second) if t]
        if not slips:
            continue
        meaning = slips[0] if len(slips) == 1 else "slips at once: " + "; and ".join(slips)
        name = "count" if count_text else "sum-without-axis" if "without an axis" in meaning \
            else "missing-batch-sum"
        variant(f"dx[closed {m} {first[:12]} {second[:12]}]",
                (m * dxhat - term1 - xhat * term2) * ivar / m, True, "dx", meaning, slip=name,
                count=m if count_text else None)
    for m, count_text, _label in counts[1:]:  # the staged form: dsq = dvar / M, dx2 = dmu / M
        dxmu = dxmu1 + 2 * xmu * dvar / m
        variant(f"dxmu[count {m}]", dxmu, True, "dxmu", count_text, slip="count", count=m)
        variant(f"dx[count {m}]", dxmu - sum_(dxmu) / m, True, "dx", count_text, slip="count",
                count=m)


def _axis_names(spec: NormSpec) -> dict[int, str]:
    """What each axis of the grouped x is called, for the sentences."""
    if spec.kind == "group":
        return {0: "N", 1: "the groups", 2: "the group's channels", 3: "H", 4: "W"}
    if len(spec.x_shape) == 4:
        return {0: "N", 1: "C", 2: "H", 3: "W"}
    return {0: "N (axis 0)", 1: "D (axis 1)"}


def _listed(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def build_test_catalogue(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
                         running_mean: np.ndarray, running_var: np.ndarray,
                         spec: NormSpec) -> Catalogue:
    """The correct quantities of test mode (normalizing with the running statistics) and
    its known slips: eps outside the square root or left out, no square root, the batch's
    own statistics, gamma and beta left out."""
    x = np.asarray(x, np.float64)
    shape, eps = spec.x_shape, spec.eps
    bshape = spec.param_bshape
    g = np.asarray(gamma, np.float64).reshape(bshape)
    b = np.asarray(beta, np.float64).reshape(bshape)
    rm = np.asarray(running_mean, np.float64).reshape(bshape)
    rv = np.asarray(running_var, np.float64).reshape(bshape)
    cat = Catalogue(spec)

    def add(name: str, value: np.ndarray, formula: str, is_full: bool, stage: str = "",
            meaning: str = "") -> None:
        value = np.broadcast_to(value, shape).copy() if is_full else np.ravel(value)
        cat.quantities.append(Quantity(name, value, formula, is_full, correct=not meaning,
                                       stage=stage, meaning=meaning))

    xmu = x - rm
    sqrtvar = np.sqrt(rv + eps)
    xhat = xmu / sqrtvar
    for name, value, formula, is_full in (
            ("x", x, "the input", True), ("mu", rm, "running_mean", False),
            ("xmu", xmu, "x - running_mean", True), ("var", rv, "running_var", False),
            ("var_eps", rv + eps, "running_var + eps", False),
            ("sqrtvar", sqrtvar, "sqrt(running_var + eps)", False),
            ("ivar", 1 / sqrtvar, "1 / sqrt(running_var + eps)", False),
            ("xhat", xhat, "(x - running_mean) / sqrt(running_var + eps)", True),
            ("gammax", g * xhat, "gamma * xhat", True),
            ("out", g * xhat + b, "gamma * (x - running_mean) / sqrt(running_var + eps) + beta",
             True)):
        add(name, value, formula, is_full)
    for tag, std, meaning in (
            ("eps outside", np.sqrt(rv) + eps,
             "eps added outside the square root; it belongs inside, sqrt(running_var + eps)"),
            ("no eps", np.sqrt(rv), "eps left out of sqrt(running_var + eps)"),
            ("no sqrt", rv + eps, "running_var + eps without the square root")):
        add(f"sqrtvar[{tag}]", std, meaning, False, "sqrtvar", meaning)
        add(f"xhat[{tag}]", xmu / std, meaning, True, "xhat", meaning)
        add(f"out[{tag}]", g * xmu / std + b, meaning, True, "out", meaning)
    axes = spec.reduce_axes
    batch = (x - x.mean(axis=axes, keepdims=True)) / np.sqrt(x.var(axis=axes, keepdims=True) + eps)
    meaning = "the batch's own statistics; test mode normalizes with running_mean and running_var"
    add("xhat[batch]", batch, meaning, True, "xhat", meaning)
    add("out[batch]", g * batch + b, meaning, True, "out", meaning)
    add("out[no gamma beta]", xhat, "gamma and beta left out: test mode scales and shifts "
        "like train mode", True, "out", "gamma and beta left out: test mode scales and shifts "
        "like train mode")
    add("out[no beta]", g * xhat, "beta left out", True, "out", "beta left out")
    return cat
