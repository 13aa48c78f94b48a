"""Fast variants of core ops' VJPs for large arrays: fewer full-size temporaries.

Each function here computes exactly what the textbook VJP in `core/ops.py` computes (the
equivalence tests check it at sizes that take it); it only skips memory traffic.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from ..core.ops import Mul, PowConst, unbroadcast
from .registry import fast_variant

__all__ = ["LARGE_BYTES", "LONG_RUN", "product_sum", "reduces_products", "mul_backward_reduced",
           "square_backward", "squares_large", "square"]

LARGE_BYTES = 1 << 16  # below this a temporary is cheap and the textbook VJP is as fast
_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def product_sum(upstream: np.ndarray, other: Any, shape: tuple[int, ...]) -> np.ndarray:
    """unbroadcast(upstream * other, shape) without the full-size product when it is summed.

    (gamma's gradient in gamma * xhat is sum(upstream * xhat) over the batch: einsum forms
    that sum directly instead of allocating upstream * xhat first.)
    """
    if shape == upstream.shape or np.shape(other) != upstream.shape or upstream.ndim > 26 \
            or _summed_run(upstream.shape, shape) > LONG_RUN:
        return unbroadcast(upstream * other, shape)
    return np.einsum(_subscripts(upstream.ndim, shape), upstream, other).reshape(shape)


# einsum adds every term to one running total; numpy sums a contiguous run of terms pairwise.
# Over runs longer than this the textbook's sum keeps digits einsum's loses (2^20 products of
# 0.1: 280 eps off instead of 0.6), so the product is formed and summed as the textbook does.
LONG_RUN = 256


def _summed_run(full: tuple[int, ...], shape: tuple[int, ...]) -> int:
    """How many contiguous terms (C order) each output of unbroadcast(full -> shape) sums:
    the product of the trailing axes that are summed away."""
    offset = len(full) - len(shape)
    run = 1
    for axis in range(len(full) - 1, -1, -1):
        kept = axis >= offset and shape[axis - offset] != 1
        if kept:
            break
        run *= full[axis]
    return run


@functools.lru_cache(maxsize=256)
def _subscripts(ndim: int, shape: tuple[int, ...]) -> str:
    # "ab,ab->b" for a (D,) operand of an (N, D) product: keep the axes `shape` keeps.
    offset = ndim - len(shape)
    kept = [i for i in range(offset, ndim) if shape[i - offset] != 1]
    letters = _LETTERS[:ndim]
    return f"{letters},{letters}->{''.join(letters[i] for i in kept)}"


def reduces_products(upstream: np.ndarray, a: Any, b: Any, out: Any) -> bool:
    """Whether Mul's VJP sums its products straight to the inputs' shapes (large, float64,
    one operand broadcast)."""
    # float64 only: einsum adds every term to one running total, which in float32 loses
    # what numpy's pairwise sum keeps (2^20 terms of 0.1: 1.6 off instead of 0.02), and
    # summing float32 products in float64 block by block costs more than it saves.
    return (upstream.nbytes >= LARGE_BYTES and upstream.dtype == np.float64
            and np.shape(a) != np.shape(b) and np.result_type(a, b) == np.float64)


@fast_variant(Mul, "backward", when=reduces_products)
def mul_backward_reduced(upstream: np.ndarray, a: Any, b: Any, out: Any
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Mul's VJP (upstream * b, upstream * a) with each product summed straight to its
    input's shape (einsum), never materialised at the broadcast shape."""
    return product_sum(upstream, b, np.shape(a)), product_sum(upstream, a, np.shape(b))


def squares_large(upstream: np.ndarray, base: Any, out: Any, *, p: float) -> bool:
    """Whether PowConst's VJP takes the one-temporary square (p == 2, large)."""
    return p == 2 and upstream.nbytes >= LARGE_BYTES


@fast_variant(PowConst, "backward", when=squares_large)
def square_backward(upstream: np.ndarray, base: Any, out: Any, *, p: float
                    ) -> tuple[np.ndarray]:
    """PowConst's VJP for p == 2: 2 * base * upstream with one temporary."""
    grad = np.multiply(upstream, base)
    grad *= 2  # in place: a fresh array of our own
    return (grad,)


def _square(base: np.ndarray, *, p: float) -> bool:
    return p == 2


@fast_variant(PowConst, "forward", when=_square)
def square(base: np.ndarray, *, p: float) -> np.ndarray:
    """base ** 2 as one multiplication (numpy's power with a float exponent takes the general
    pow routine: twice to three times as long at (64, 256)); x * x rounded once is at least as
    exact as pow(x, 2.0)."""
    return np.square(base)
