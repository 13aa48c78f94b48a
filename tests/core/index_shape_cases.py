"""Hypothesis cases for the indexing, extreme, padding, joining and window ops: each draws
(tinygrad_bn function, the same function in PyTorch, input arrays), read by test_ops.py
(first order vs central differences) and test_higher_order.py (Hessian-vector products)."""

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - PyTorch's own convention
from hypothesis import assume
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, mutually_broadcastable_shapes

import tinygrad_bn as tb
from tinygrad_bn.core.ops_index import normalize_index, scatter_add
from tinygrad_bn.core.ops_shape import window_out_shape, window_sum

SMALL = dict(min_dims=0, max_dims=3, min_side=1, max_side=3)


def seeded(draw):
    return np.random.default_rng(draw(st.integers(0, 2**32 - 1)))


def distinct(rng, shape):
    """Values with no two equal (well apart for central differences): a shuffled grid."""
    size = int(np.prod(shape))
    return (rng.permutation(size) * 0.37 - size * 0.18 + rng.uniform(-0.05, 0.05, size)).reshape(shape)


def linear_map(fn, in_shape):
    """A numpy-linear fn as a PyTorch function: its matrix, taken column by column."""
    size = int(np.prod(in_shape))
    columns = [np.asarray(fn(np.eye(size)[j].reshape(in_shape))).reshape(-1) for j in range(size)]
    out_shape = np.shape(fn(np.zeros(in_shape)))
    matrix = torch.tensor(np.stack(columns, axis=1) if columns else np.zeros((0, 0)))
    return lambda g: (matrix @ g.reshape(-1)).reshape(out_shape)


def to_torch_index(index):
    return tuple(torch.tensor(i) if isinstance(i, np.ndarray) else i for i in index)


@st.composite
def an_index(draw, shape):
    """An index of one of numpy's kinds for an input of `shape` (ndim >= 1)."""
    rng = seeded(draw)
    kind = draw(st.sampled_from(["int", "slice", "step", "none_ellipsis", "repeated", "mask",
                                 "mixed", "row_pick"]))
    n = shape[0]
    if kind == "int":
        return (int(rng.integers(-n, n)),)
    if kind == "slice":
        return (slice(int(rng.integers(0, n)), None),)
    if kind == "step":
        return (Ellipsis, slice(None, None, 2))
    if kind == "none_ellipsis":
        return (None, Ellipsis, slice(0, 1))
    if kind == "repeated":
        return (rng.integers(0, n, size=4),)
    if kind == "mask":
        return (rng.random(shape) > 0.4,)
    if kind == "mixed" and len(shape) >= 2:
        return (rng.integers(0, n, size=3), slice(None), )
    if len(shape) >= 2:  # the softmax loss's correct-class pick: x[rows, y]
        rows = np.arange(n)
        return (rows, rng.integers(0, shape[1], size=n))
    return (rng.integers(-n, n, size=3),)


@st.composite
def index_case(draw):
    shape = draw(array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4))
    index = draw(an_index(shape))
    rng = seeded(draw)
    return ((lambda a: a[index]), (lambda a: a[to_torch_index(index)]), [rng.uniform(-2, 2, shape)])


@st.composite
def scatter_add_case(draw):
    shape = draw(array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4))
    index = normalize_index(draw(an_index(shape)), shape)
    picked = np.empty(shape)[index].shape
    assume(np.prod(picked) > 0)  # central differences need an input to perturb
    rng = seeded(draw)
    return ((lambda g: scatter_add(g, shape, index)),
            linear_map(lambda g: scatter_add(g, shape, index), picked), [rng.uniform(-2, 2, picked)])


def extreme_case(name):
    @st.composite
    def case(draw):
        shape = draw(array_shapes(**SMALL))
        axes = draw(st.lists(st.integers(0, max(len(shape) - 1, 0)), unique=True,
                             max_size=len(shape)).map(tuple)) if shape else ()
        keepdims = draw(st.booleans())
        axis = axes or None
        dims = axes or tuple(range(len(shape)))

        def torch_fn(a):
            return getattr(torch, "a" + name)(a, dim=dims, keepdim=keepdims) if dims else a

        return ((lambda a: getattr(a, name)(axis=axis, keepdims=keepdims)), torch_fn,
                [distinct(seeded(draw), shape)])
    return case()


def pick_case(name):
    @st.composite
    def case(draw):
        shapes = draw(mutually_broadcastable_shapes(num_shapes=2, **SMALL)).input_shapes
        rng = seeded(draw)
        a = rng.uniform(-2, 2, shapes[0])
        b = rng.uniform(-2, 2, shapes[1])
        b = np.where(np.abs(a - b) < 0.1, b + 0.3, b)  # no near ties (kinks) under differences
        return (lambda x, y: getattr(tb, name)(x, y)), getattr(torch, name), [a, b]
    return case()


@st.composite
def pad_case(draw):
    shape = draw(array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=3))
    pairs = tuple((draw(st.integers(0, 2)), draw(st.integers(0, 2))) for _ in shape)
    form = draw(st.sampled_from(["pairs", "int", "one_pair"]))
    width = {"pairs": pairs, "int": pairs[0][0], "one_pair": pairs[0]}[form]
    full = np.broadcast_to(np.asarray(width), (len(shape), 2))
    torch_pads = [int(v) for pair in full[::-1] for v in pair]
    fill = draw(st.sampled_from([0.0, 1.5]))
    return ((lambda a: tb.pad(a, width, constant_values=fill)),
            (lambda a: F.pad(a, torch_pads, value=fill)), [seeded(draw).uniform(-2, 2, shape)])


@st.composite
def concatenate_case(draw):
    shape = draw(array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=3))
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    count = draw(st.integers(1, 3))
    rng = seeded(draw)
    arrays = []
    for _ in range(count):
        own = list(shape)
        own[axis] = draw(st.integers(1, 3))
        arrays.append(rng.uniform(-2, 2, own))
    stacked = draw(st.booleans())
    if stacked:  # stack: new axis, every input of one shape
        arrays = [rng.uniform(-2, 2, shape) for _ in range(count)]
        return ((lambda *a: tb.stack(a, axis=axis)), (lambda *a: torch.stack(a, dim=axis)), arrays)
    return ((lambda *a: tb.concatenate(a, axis=axis)), (lambda *a: torch.cat(a, dim=axis)), arrays)


@st.composite
def windows_params(draw):
    shape = draw(array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4))
    axes = draw(st.lists(st.integers(0, len(shape) - 1), unique=True, min_size=1,
                         max_size=len(shape)).map(tuple))
    sizes = tuple(draw(st.integers(1, shape[a])) for a in axes)
    return shape, sizes, axes


def torch_windows(sizes, axes):
    def fn(a):
        for size, ax in zip(sizes, axes):
            a = a.unfold(ax, size, 1)
        return a
    return fn


@st.composite
def sliding_window_case(draw):
    shape, sizes, axes = draw(windows_params())
    stride = draw(st.sampled_from([1, 2]))

    def tb_fn(a):
        windows = tb.sliding_window_view(a, sizes, axis=axes)
        return windows if stride == 1 else windows[(slice(None, None, stride),) * len(shape)]

    def torch_fn(a):
        windows = torch_windows(sizes, axes)(a)
        return windows if stride == 1 else windows[(slice(None, None, stride),) * len(shape)]

    return tb_fn, torch_fn, [seeded(draw).uniform(-2, 2, shape)]


@st.composite
def window_sum_case(draw):
    shape, sizes, axes = draw(windows_params())
    windows = (*window_out_shape(shape, sizes, axes), *sizes)
    return ((lambda g: window_sum(g, shape, sizes, axes)),
            linear_map(lambda g: window_sum(g, shape, sizes, axes), windows),
            [seeded(draw).uniform(-2, 2, windows)])


CASES = {
    "Index": index_case(),
    "ScatterAdd": scatter_add_case(),
    "Max": extreme_case("max"),
    "Min": extreme_case("min"),
    "Maximum": pick_case("maximum"),
    "Minimum": pick_case("minimum"),
    "Pad": pad_case(),
    "Concatenate": concatenate_case(),
    "SlidingWindow": sliding_window_case(),
    "WindowSum": window_sum_case(),
}
