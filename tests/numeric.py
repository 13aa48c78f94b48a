"""The assignment's numeric-gradient helper, for tests that check code the way it does."""

import numpy as np


def eval_numerical_gradient_array(f, x, df, h=1e-5):
    """The assignment's own helper, verbatim in behaviour."""
    grad = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"], op_flags=["readwrite"])
    while not it.finished:
        ix = it.multi_index
        oldval = x[ix]
        x[ix] = oldval + h
        pos = f(x).copy()
        x[ix] = oldval - h
        neg = f(x).copy()
        x[ix] = oldval
        grad[ix] = np.sum((pos - neg) * df) / (2 * h)
        it.iternext()
    return grad
