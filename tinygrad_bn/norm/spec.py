"""Where a normalization reduces, and the checks of its arguments.

A `NormSpec` says which axes of x a normalization averages over and what shape its
gamma and beta have: batch norm of (N, D) over axis 0, of (N, C, H, W) over (0, 2, 3),
layer norm over every axis but the first, group norm over (C/G, H, W) of x viewed as
(N, G, C/G, H, W). The staged graph and the fused op both read it.
"""

from __future__ import annotations

import functools
import math
import numbers
from dataclasses import dataclass, replace
from typing import Any

from ..core.axes import normalize_axis
from ..core.node import Node

__all__ = ["NormSpec", "KINDS", "TITLES", "check_eps", "batchnorm_spec", "layernorm_spec",
           "spatial_batchnorm_spec", "groupnorm_spec", "norm_spec"]

KINDS = ("batch", "spatial", "layer", "group")
# What each kind is called in sentences and pictures.
TITLES = {"batch": "batch norm", "spatial": "spatial batch norm", "layer": "layer norm",
          "group": "group norm"}


def check_eps(eps: Any) -> float:
    """eps must be a finite number > 0 (it keeps 1/sqrt(var + eps) finite)."""
    if (isinstance(eps, bool) or not isinstance(eps, numbers.Real)
            or not math.isfinite(eps) or eps <= 0):
        raise ValueError(f"eps: expected a finite number > 0, got {eps!r}")
    return float(eps)


@dataclass(frozen=True)
class NormSpec:
    """Where a normalization reduces and what shape its gamma/beta have.

    reduce_axes: axes of x averaged over (of `grouped_shape` when grouping).
    param_shape: shape gamma and beta must have, e.g. (D,) or (C,).
    param_bshape: that shape with 1s inserted so it broadcasts against x, e.g. (1, C, 1, 1).
    grouped_shape: for group norm, the shape x is viewed as while normalizing; else None.
    """

    kind: str  # one of KINDS, the word norm_spec takes
    x_shape: tuple[int, ...]
    reduce_axes: tuple[int, ...]
    param_shape: tuple[int, ...]
    param_bshape: tuple[int, ...]
    eps: float
    grouped_shape: tuple[int, ...] | None = None

    @property
    def title(self) -> str:
        """The kind in words: "batch norm", "spatial batch norm", "layer norm", "group norm"."""
        return TITLES[self.kind]

    # Derived from the fields, which never change: computed once per spec (a training loop
    # reads them every step).
    @functools.cached_property
    def count(self) -> int:
        """How many values each mean averages over (N for (N, D) batch norm)."""
        shape = self.grouped_shape or self.x_shape
        return math.prod(shape[a] for a in self.reduce_axes)

    @functools.cached_property
    def param_sum_axes(self) -> tuple[int, ...]:
        """The axes of x that gamma's and beta's gradients are summed over (those gamma lacks)."""
        return tuple(i for i, size in enumerate(self.param_bshape) if size == 1)

    def grouped(self, array: Any) -> Any:
        """x (or a gradient of x's shape) viewed as the shape the statistics are taken over."""
        return array if self.grouped_shape is None else array.reshape(self.grouped_shape)

    def check_params(self, gamma: Node, beta: Node) -> None:
        """Raise ValueError naming gamma/beta unless they have the feature shape."""
        for argname, param in (("gamma", gamma), ("beta", beta)):
            if param.shape not in (self.param_shape, self.param_bshape):
                raise ValueError(
                    f"{argname}: expected shape {self.param_shape} (the {self.title} feature "
                    f"axes of x with shape {self.x_shape}), got shape {param.shape}"
                )

    def check_nonempty(self) -> None:
        shape = self.grouped_shape or self.x_shape
        if self.count == 0:
            raise ValueError(
                f"x: the reduced axes {self.reduce_axes} of shape {shape} hold no values "
                f"(an empty batch); normalization needs at least one"
            )


def batchnorm_spec(x_shape: tuple[int, ...], axis: Any = None, eps: Any = 1e-5) -> NormSpec:
    """Check batch-norm arguments and say where it reduces.

    axis=None means 0 for (N, D) input and (0, 2, 3) for (N, C, H, W); gamma and beta
    cover the axes that are kept.
    """
    if type(axis) is list:
        axis = tuple(axis)
    try:
        # The types are part of the key: True == 1 and hash alike, but only one is valid.
        return _batchnorm_spec(tuple(x_shape), axis, eps, type(axis), type(eps))
    except TypeError as error:
        if "unhashable" not in str(error):
            raise
        raise TypeError(f"axis: expected int or tuple of ints, got {axis!r}") from None


@functools.lru_cache(maxsize=256)
def _batchnorm_spec(x_shape: tuple[int, ...], axis: Any, eps: Any, *_types: type) -> NormSpec:
    # Cached: a training loop asks for the same spec every step (a NormSpec is immutable).
    ndim = len(x_shape)
    if axis is None:
        if ndim == 2:
            axis = 0
        elif ndim == 4:
            axis = (0, 2, 3)
        else:
            raise ValueError(
                f"axis: no default for x with {ndim} dimensions (shape {x_shape}); "
                f"batch norm defaults to 0 for (N, D) and (0, 2, 3) for (N, C, H, W), pass axis"
            )
    if ndim == 0:
        raise ValueError("x: expected an array with a batch axis, got a 0-d scalar")
    reduce_axes = normalize_axis(axis, ndim)
    if not reduce_axes:
        raise ValueError(f"axis: expected at least one axis to normalize over, got {axis!r}")
    kept = tuple(a for a in range(ndim) if a not in reduce_axes)
    spec = NormSpec(
        kind="batch",
        x_shape=tuple(x_shape),
        reduce_axes=reduce_axes,
        param_shape=tuple(x_shape[a] for a in kept),
        param_bshape=tuple(x_shape[a] if a in kept else 1 for a in range(ndim)),
        eps=check_eps(eps),
    )
    spec.check_nonempty()
    return spec



def _check_rank(x_shape: tuple[int, ...], expected: str, ok: bool) -> None:
    if not ok:
        raise ValueError(f"x: expected shape {expected}, got {tuple(x_shape)}")


def _cached(build: Any) -> Any:
    """`build(x_shape, ...)` computed once per distinct call (a NormSpec is immutable and a
    training loop asks for the same one every step). The arguments' types are part of the
    key (True == 1 and hash alike, but only one is valid); arguments that cannot be a key (a
    list, an array) skip the cache, so that `build` gives its own error. Errors are never
    cached: bad arguments raise on every call."""
    cache = functools.lru_cache(maxsize=256)(
        lambda x_shape, arguments, keywords, _types: build(x_shape, *arguments,
                                                           **dict(keywords)))

    @functools.wraps(build)
    def cached(x_shape: Any, *arguments: Any, **keywords: Any) -> NormSpec:
        try:
            key = (tuple(x_shape), arguments, tuple(sorted(keywords.items())))
            hash(key)
        except TypeError:
            return build(x_shape, *arguments, **keywords)
        types = (tuple(map(type, key[0])), tuple(map(type, arguments)),
                 tuple(type(v) for _, v in key[2]))
        return cache(*key, types)

    cached.cache_clear = cache.cache_clear  # type: ignore[attr-defined]
    return cached


@_cached
def layernorm_spec(x_shape: tuple[int, ...], eps: Any = 1e-5) -> NormSpec:
    """Layer norm: each sample over all its feature axes; gamma/beta have x.shape[1:]."""
    _check_rank(x_shape, "(N, D) or (N, D1, D2, ...)", len(x_shape) >= 2)
    spec = NormSpec(
        kind="layer",
        x_shape=tuple(x_shape),
        reduce_axes=tuple(range(1, len(x_shape))),
        param_shape=tuple(x_shape[1:]),
        param_bshape=(1, *x_shape[1:]),
        eps=check_eps(eps),
    )
    spec.check_nonempty()
    return spec


@_cached
def spatial_batchnorm_spec(x_shape: tuple[int, ...], eps: Any = 1e-5) -> NormSpec:
    """Spatial batch norm: (N, C, H, W) over (0, 2, 3); gamma/beta of shape (C,)."""
    _check_rank(x_shape, "(N, C, H, W)", len(x_shape) == 4)
    spec = batchnorm_spec(x_shape, (0, 2, 3), eps)
    return replace(spec, kind="spatial")


@_cached
def groupnorm_spec(x_shape: tuple[int, ...], groups: Any, eps: Any = 1e-5,
                   argname: str = "groups") -> NormSpec:
    """Group norm: (N, C, H, W) seen as (N, G, C/G, H, W), normalized over the last three
    axes; gamma/beta per channel, (C,) or (1, C, 1, 1)."""
    _check_rank(x_shape, "(N, C, H, W)", len(x_shape) == 4)
    n, c, h, w = x_shape
    if isinstance(groups, bool) or not isinstance(groups, numbers.Integral) or groups <= 0:
        raise ValueError(f"{argname}: expected a positive int, got {groups!r}")
    if c % groups:
        raise ValueError(f"{argname}: expected a divisor of the channel count C={c}, got {groups}")
    spec = NormSpec(
        kind="group",
        x_shape=tuple(x_shape),
        reduce_axes=(2, 3, 4),
        param_shape=(c,),
        param_bshape=(1, c, 1, 1),
        eps=check_eps(eps),
        grouped_shape=(n, int(groups), c // int(groups), h, w),
    )
    spec.check_nonempty()
    return spec



def norm_spec(kind: str, x_shape: tuple[int, ...], *, eps: Any = 1e-5, groups: Any = None,
              axis: Any = None) -> NormSpec:
    """The spec of normalization `kind` (batch, spatial, layer, group) for input x_shape.

    `axis` is batch norm's alone and `groups` group norm's alone: given to another kind they
    would be ignored, so they are refused."""
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {', '.join(KINDS)}, got {kind!r}")
    if axis is not None and kind != "batch":
        raise ValueError(f"axis: only batch norm takes an axis ({TITLES[kind]} reduces over "
                         f"fixed axes), got {axis!r}")
    if groups is not None and kind != "group":
        raise ValueError(f"groups: only group norm takes a group count, got {groups!r} for "
                         f"{TITLES[kind]}")
    if kind == "batch":
        return batchnorm_spec(x_shape, axis, eps)
    if kind == "spatial":
        return spatial_batchnorm_spec(x_shape, eps)
    if kind == "layer":
        return layernorm_spec(x_shape, eps)
    return groupnorm_spec(x_shape, groups, eps)


