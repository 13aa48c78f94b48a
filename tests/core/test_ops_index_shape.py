"""Indexing, extremes, padding, joining and windows: values, ties, repeated indices, dtypes,
and the one-line errors for bad arguments (the gradient cases are in test_ops.py and
test_higher_order.py)."""

import numpy as np
import pytest
import torch

import tinygrad_bn as tb


def test_repeated_integer_indices_add_their_gradients():
    x = tb.Node(np.arange(6.0))
    picked = x[np.array([1, 1, 4, 1])]
    np.testing.assert_array_equal(picked.data, [1.0, 1.0, 4.0, 1.0])
    picked.backward(np.array([1.0, 2.0, 3.0, 4.0]))
    np.testing.assert_array_equal(x.grad, [0.0, 7.0, 0.0, 0.0, 3.0, 0.0])


def test_indexing_follows_numpy_for_every_kind():
    data = np.arange(24.0).reshape(2, 3, 4)
    mask = data % 3 == 0
    rows = np.array([1, 0, 1])
    for index in [1, -1, (0, 2), slice(None, None, -1), (Ellipsis, slice(1, None, 2)),
                  (None, 0), mask, (rows, slice(None), np.array([3, 0, 3])), (0, [2, 2])]:
        x = tb.Node(data)
        out = x[index]
        np.testing.assert_array_equal(out.data, data[index])
        upstream = np.arange(np.size(data[index]), dtype=float).reshape(np.shape(data[index]))
        out.backward(upstream)
        expected = np.zeros_like(data)
        np.add.at(expected, index, upstream)
        np.testing.assert_array_equal(x.grad, expected)


def test_float32_stays_float32():
    x = tb.Node(np.arange(12, dtype=np.float32).reshape(3, 4))
    outs = [x[np.array([0, 0])], x.max(axis=1), tb.maximum(x, 2.0), tb.pad(x, 1),
            tb.concatenate([x, x]), tb.stack([x, x], axis=2), tb.sliding_window_view(x, (2, 2))]
    for out in outs:
        assert out.dtype == np.float32
        (dx,) = tb.grad(out, [x], np.ones(out.shape, np.float32))
        assert dx.dtype == np.float32


@pytest.mark.parametrize("name", ["max", "min"])
def test_ties_share_the_gradient_evenly_as_pytorch(name):
    data = np.array([[1.0, 3.0, 3.0, -2.0], [-2.0, -2.0, 0.0, -2.0]])
    for axis, dims in [(1, 1), (None, (0, 1)), (0, 0)]:
        x = tb.Node(data)
        out = getattr(x, name)(axis=axis)
        upstream = np.arange(1.0, 1.0 + out.size).reshape(out.shape)
        out.backward(upstream)
        t = torch.tensor(data, requires_grad=True)
        getattr(torch, "a" + name)(t, dim=dims).backward(torch.tensor(upstream))
        np.testing.assert_allclose(x.grad, t.grad.numpy(), rtol=1e-15)
    assert tb.Node(data).max(axis=1).data.tolist() == [3.0, 0.0]
    x = tb.Node(data)
    tb.max(x).backward()
    np.testing.assert_array_equal(x.grad, [[0, 0.5, 0.5, 0], [0, 0, 0, 0]])


@pytest.mark.parametrize("name", ["maximum", "minimum"])
def test_elementwise_ties_split_the_gradient_as_pytorch(name):
    a_data, b_data = np.array([[1.0, 2.0, 3.0]]), np.array([[2.0], [2.0]])
    a, b = tb.Node(a_data), tb.Node(b_data)
    out = getattr(tb, name)(a, b)
    upstream = np.arange(6.0).reshape(2, 3)
    out.backward(upstream)
    ta, tb_ = (torch.tensor(v, requires_grad=True) for v in (a_data, b_data))
    getattr(torch, name)(ta, tb_).backward(torch.tensor(upstream))
    np.testing.assert_array_equal(a.grad, ta.grad.numpy())
    np.testing.assert_array_equal(b.grad, tb_.grad.numpy())


def test_overlapping_windows_add_their_gradients():
    x = tb.Node(np.arange(5.0))
    windows = tb.sliding_window_view(x, 3)
    np.testing.assert_array_equal(windows.data, np.lib.stride_tricks.sliding_window_view(x.data, 3))
    assert not windows.data.flags.writeable  # a view, as numpy's
    windows.backward(np.ones((3, 3)))
    np.testing.assert_array_equal(x.grad, [1.0, 2.0, 3.0, 2.0, 1.0])
    strided = tb.Node(np.arange(7.0))
    tb.sliding_window_view(strided, 3)[::2].sum().backward()
    np.testing.assert_array_equal(strided.grad, [1.0, 1.0, 2.0, 1.0, 2.0, 1.0, 1.0])


def test_pad_forms_and_gradient():
    x = tb.Node(np.ones((2, 3)))
    for width in [1, (1,), (1, 2), ((1, 2),), ((0, 1), (2, 0))]:
        np.testing.assert_array_equal(tb.pad(x, width, constant_values=-1).data,
                                      np.pad(x.data, width, constant_values=-1))
    out = tb.pad(x, ((1, 0), (0, 2)))
    out.backward(np.arange(15.0).reshape(3, 5))
    np.testing.assert_array_equal(x.grad, np.arange(15.0).reshape(3, 5)[1:, :3])


def test_concatenate_and_stack_split_the_gradient():
    a, b = tb.Node(np.ones((2, 3))), tb.Node(np.zeros((1, 3)))
    out = tb.concatenate([a, b], axis=0)
    upstream = np.arange(9.0).reshape(3, 3)
    out.backward(upstream)
    np.testing.assert_array_equal(a.grad, upstream[:2])
    np.testing.assert_array_equal(b.grad, upstream[2:])
    c, d = tb.Node(np.ones(2)), tb.Node(np.zeros(2))
    stacked = tb.stack([c, d], axis=1)
    assert stacked.shape == (2, 2)
    stacked.backward(np.array([[1.0, 2.0], [3.0, 4.0]]))
    np.testing.assert_array_equal(d.grad, [2.0, 4.0])


@pytest.mark.parametrize("call,error,message", [
    (lambda x: x[5], IndexError, r"index: index 5 is out of bounds for axis 0 with size 3 \(input"),
    (lambda x: x[0, 0, 0], IndexError, "index: too many indices"),
    (lambda x: x[np.array([0.5])], TypeError, "index: expected ints, slices"),
    (lambda x: x[tb.Node(np.zeros(1))], TypeError, "index: a Node cannot index"),
    (lambda x: x[np.ones((2, 4), bool)], IndexError, "index: boolean index did not match"),
    (lambda x: x.max(axis=2), ValueError, r"axis: expected values in \[-2, 2\)"),
    (lambda x: tb.max(x[:0]), ValueError, "axis: cannot take the max over axis 0, which has size 0"),
    (lambda x: tb.pad(x, -1), ValueError, "pad_width: expected non-negative ints"),
    (lambda x: tb.pad(x, ((1, 1), (1, 1), (1, 1))), ValueError, "pad_width: expected"),
    (lambda x: tb.pad(x, 1.5), ValueError, "pad_width: expected"),
    (lambda x: tb.pad(x, 1, constant_values=np.ones(2)), TypeError, "constant_values: expected a number"),
    (lambda x: tb.sliding_window_view(x, (4, 1)), ValueError,
     r"window_shape: a window of 4 does not fit axis 0 of size 3 \(input of shape \(3, 4\)\)"),
    (lambda x: tb.sliding_window_view(x, (2, 2, 2)), ValueError, "window_shape: expected one size per axis"),
    (lambda x: tb.sliding_window_view(x, -1, axis=0), ValueError, "window_shape: expected non-negative"),
    (lambda x: tb.concatenate([x, tb.Node(np.ones((3, 2)))], axis=0), ValueError,
     r"nodes\[1\]: expected shape \(3, 4\) except along axis 0, got \(3, 2\)"),
    (lambda x: tb.concatenate([x, x.astype(np.float32)]), TypeError, "nodes: expected one dtype"),
    (lambda x: tb.concatenate([]), ValueError, "nodes: expected at least one array"),
    (lambda x: tb.stack([x, x[:2]]), ValueError, r"nodes\[1\]: expected shape \(3, 4\)"),
])
def test_bad_arguments_get_one_line_errors_naming_them(call, error, message):
    x = tb.Node(np.arange(12.0).reshape(3, 4))
    with pytest.raises(error, match=message) as caught:
        call(x)
    assert "\n" not in str(caught.value)


def test_iterating_a_node_stops_at_its_length():
    rows = list(tb.Node(np.arange(6.0).reshape(3, 2)))
    assert [row.data.tolist() for row in rows] == [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]


def test_changing_the_index_array_afterwards_changes_nothing():
    x = tb.Node(np.arange(4.0))
    rows = np.array([0, 0, 3])
    picked = x[rows]
    rows[:] = 1  # the caller reuses its array
    picked.backward(np.ones(3))
    np.testing.assert_array_equal(x.grad, [2.0, 0.0, 0.0, 1.0])
