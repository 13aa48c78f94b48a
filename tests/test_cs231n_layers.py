"""The rest of `layers.py` (affine, relu, dropout, conv, max pool, svm and softmax loss),
checked the way the FullyConnectedNets, Dropout and ConvolutionalNetworks notebooks check it:
their inputs, their expected values and their numeric gradients."""

import numpy as np
import pytest
from numeric import eval_numerical_gradient_array

from tinygrad_bn import rel_error
from tinygrad_bn.cs231n import (
    affine_backward,
    affine_forward,
    conv_backward_naive,
    conv_forward_naive,
    dropout_backward,
    dropout_forward,
    max_pool_backward_naive,
    max_pool_forward_naive,
    relu_backward,
    relu_forward,
    softmax_loss,
    svm_loss,
)


def eval_numerical_gradient(f, x, h=1e-5):
    """The notebooks' scalar-function helper: central differences, one entry at a time."""
    return eval_numerical_gradient_array(lambda v: np.array(f(v)), x, np.array(1.0), h)


def test_affine_forward_notebook_values():
    num_inputs, input_shape, output_dim = 2, (4, 5, 6), 3
    input_size = num_inputs * np.prod(input_shape)
    weight_size = output_dim * np.prod(input_shape)
    x = np.linspace(-0.1, 0.5, num=input_size).reshape(num_inputs, *input_shape)
    w = np.linspace(-0.2, 0.3, num=weight_size).reshape(np.prod(input_shape), output_dim)
    b = np.linspace(-0.3, 0.1, num=output_dim)
    out, _ = affine_forward(x, w, b)
    correct_out = np.array([[1.49834967, 1.70660132, 1.91485297],
                            [3.25553199, 3.5141327, 3.77273342]])
    assert rel_error(out, correct_out) < 1e-8


def test_affine_backward_notebook_gradients():
    np.random.seed(231)
    x = np.random.randn(10, 2, 3)
    w = np.random.randn(6, 5)
    b = np.random.randn(5)
    dout = np.random.randn(10, 5)
    dx_num = eval_numerical_gradient_array(lambda x: affine_forward(x, w, b)[0], x, dout)
    dw_num = eval_numerical_gradient_array(lambda w: affine_forward(x, w, b)[0], w, dout)
    db_num = eval_numerical_gradient_array(lambda b: affine_forward(x, w, b)[0], b, dout)
    _, cache = affine_forward(x, w, b)
    dx, dw, db = affine_backward(dout, cache)
    assert rel_error(dx_num, dx) < 1e-9 and rel_error(dw_num, dw) < 1e-9 and rel_error(db_num, db) < 1e-9
    assert dx.shape == x.shape and dw.shape == w.shape and db.shape == b.shape


def test_relu_notebook_values_and_gradient():
    x = np.linspace(-0.5, 0.5, num=12).reshape(3, 4)
    out, _ = relu_forward(x)
    correct_out = np.array([[0., 0., 0., 0.],
                            [0., 0., 0.04545455, 0.13636364],
                            [0.22727273, 0.31818182, 0.40909091, 0.5]])
    assert rel_error(out, correct_out) < 1e-7
    np.random.seed(231)
    x = np.random.randn(10, 10)
    dout = np.random.randn(*x.shape)
    dx_num = eval_numerical_gradient_array(lambda x: relu_forward(x)[0], x, dout)
    _, cache = relu_forward(x)
    assert rel_error(dx_num, relu_backward(dout, cache)) < 1e-10


@pytest.mark.parametrize("loss_fn,expected_loss", [(svm_loss, 9.0), (softmax_loss, 2.3)])
def test_loss_layers_notebook_checks(loss_fn, expected_loss):
    np.random.seed(231)
    num_classes, num_inputs = 10, 50
    x = 0.001 * np.random.randn(num_inputs, num_classes)
    y = np.random.randint(num_classes, size=num_inputs)
    dx_num = eval_numerical_gradient(lambda x: loss_fn(x, y)[0], x)
    loss, dx = loss_fn(x, y)
    assert abs(loss - expected_loss) < 0.01
    assert rel_error(dx_num, dx) < 1e-8  # the notebook prints 1.4e-9 (svm) and 9.4e-9 (softmax)
    assert isinstance(loss, float) and dx.shape == x.shape


def test_softmax_loss_divides_by_n():
    # The slip a student made: dx not divided by N. The staged graph's mean does it.
    x, y = np.zeros((4, 3)), np.array([0, 1, 2, 0])
    loss, dx = softmax_loss(x, y)
    assert loss == pytest.approx(np.log(3))
    np.testing.assert_allclose(dx[0], [(1 / 3 - 1) / 4, 1 / 12, 1 / 12])


def test_dropout_forward_notebook_statistics():
    np.random.seed(231)
    x = np.random.randn(500, 500) + 10
    for p in [0.25, 0.4, 0.7]:
        out, _ = dropout_forward(x, {"mode": "train", "p": p})
        out_test, _ = dropout_forward(x, {"mode": "test", "p": p})
        assert abs(out.mean() - x.mean()) < 0.05 * x.mean()
        np.testing.assert_array_equal(out_test, x)
        assert abs((out == 0).mean() - (1 - p)) < 0.01
        assert set(np.unique(out[out != 0] / x[out != 0]).round(10)) == {round(1 / p, 10)}


def test_dropout_backward_notebook_gradient():
    np.random.seed(231)
    x = np.random.randn(10, 10) + 10
    dout = np.random.randn(*x.shape)
    dropout_param = {"mode": "train", "p": 0.2, "seed": 123}
    out, cache = dropout_forward(x, dropout_param)
    dx = dropout_backward(dout, cache)
    dx_num = eval_numerical_gradient_array(lambda xx: dropout_forward(xx, dropout_param)[0], x, dout)
    assert rel_error(dx, dx_num) < 1e-10
    _, test_cache = dropout_forward(x, {"mode": "test", "p": 0.2})
    np.testing.assert_array_equal(dropout_backward(dout, test_cache), dout)


def test_dropout_old_wording_p_is_the_drop_probability():
    x = np.ones((200, 200))
    keep_out, _ = dropout_forward(x, {"mode": "train", "p": 0.8, "seed": 1})
    drop_out, _ = dropout_forward(x, {"mode": "train", "p": 0.2, "seed": 1}, p_is="drop")
    np.testing.assert_array_equal(keep_out, drop_out)
    assert abs((drop_out == 0).mean() - 0.2) < 0.01


def test_conv_forward_notebook_values():
    x_shape, w_shape = (2, 3, 4, 4), (3, 3, 4, 4)
    x = np.linspace(-0.1, 0.5, num=np.prod(x_shape)).reshape(x_shape)
    w = np.linspace(-0.2, 0.3, num=np.prod(w_shape)).reshape(w_shape)
    b = np.linspace(-0.1, 0.2, num=3)
    out, _ = conv_forward_naive(x, w, b, {"stride": 2, "pad": 1})
    correct_out = np.array([[[[-0.08759809, -0.10987781], [-0.18387192, -0.2109216]],
                             [[0.21027089, 0.21661097], [0.22847626, 0.23004637]],
                             [[0.50813986, 0.54309974], [0.64082444, 0.67101435]]],
                            [[[-0.98053589, -1.03143541], [-1.19128892, -1.24695841]],
                             [[0.69108355, 0.66880383], [0.59480972, 0.56776003]],
                             [[2.36270298, 2.36904306], [2.38090835, 2.38247847]]]])
    assert rel_error(out, correct_out) < 1e-7


def test_conv_backward_notebook_gradients():
    np.random.seed(231)
    x = np.random.randn(4, 3, 5, 5)
    w = np.random.randn(2, 3, 3, 3)
    b = np.random.randn(2,)
    dout = np.random.randn(4, 2, 5, 5)
    conv_param = {"stride": 1, "pad": 1}
    dx_num = eval_numerical_gradient_array(lambda x: conv_forward_naive(x, w, b, conv_param)[0], x, dout)
    dw_num = eval_numerical_gradient_array(lambda w: conv_forward_naive(x, w, b, conv_param)[0], w, dout)
    db_num = eval_numerical_gradient_array(lambda b: conv_forward_naive(x, w, b, conv_param)[0], b, dout)
    _, cache = conv_forward_naive(x, w, b, conv_param)
    dx, dw, db = conv_backward_naive(dout, cache)
    assert rel_error(dx, dx_num) < 1e-8 and rel_error(dw, dw_num) < 1e-8 and rel_error(db, db_num) < 1e-8
    # The same cache backpropagated twice gives the same, not doubled, gradients.
    np.testing.assert_array_equal(conv_backward_naive(dout, cache)[0], dx)


def test_max_pool_notebook_values_and_gradient():
    x_shape = (2, 3, 4, 4)
    x = np.linspace(-0.3, 0.4, num=np.prod(x_shape)).reshape(x_shape)
    pool_param = {"pool_width": 2, "pool_height": 2, "stride": 2}
    out, _ = max_pool_forward_naive(x, pool_param)
    correct_out = np.array([[[[-0.26315789, -0.24842105], [-0.20421053, -0.18947368]],
                             [[-0.14526316, -0.13052632], [-0.08631579, -0.07157895]],
                             [[-0.02736842, -0.01263158], [0.03157895, 0.04631579]]],
                            [[[0.09052632, 0.10526316], [0.14947368, 0.16421053]],
                             [[0.20842105, 0.22315789], [0.26736842, 0.28210526]],
                             [[0.32631579, 0.34105263], [0.38526316, 0.4]]]])
    assert rel_error(out, correct_out) < 1e-7
    np.random.seed(231)
    x = np.random.randn(3, 2, 8, 8)
    dout = np.random.randn(3, 2, 4, 4)
    dx_num = eval_numerical_gradient_array(lambda x: max_pool_forward_naive(x, pool_param)[0], x, dout)
    _, cache = max_pool_forward_naive(x, pool_param)
    assert rel_error(max_pool_backward_naive(dout, cache), dx_num) < 1e-10


def test_float32_in_float32_out():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    b = np.zeros(4, np.float32)
    out, cache = conv_forward_naive(x, w, b, {"stride": 1, "pad": 1})
    assert out.dtype == np.float32
    assert all(g.dtype == np.float32 for g in conv_backward_naive(np.ones_like(out), cache))
    pooled, cache = max_pool_forward_naive(x, {"pool_height": 2, "pool_width": 2, "stride": 2})
    assert pooled.dtype == max_pool_backward_naive(np.ones_like(pooled), cache).dtype == np.float32


@pytest.mark.parametrize("call,error,message", [
    (lambda: conv_forward_naive(np.zeros((1, 1, 5, 5)), np.zeros((1, 1, 3, 3)), np.zeros(1),
                                {"stride": 3, "pad": 0}), ValueError,
     r"conv_param\['stride'\]: expected a stride that divides 2"),
    (lambda: conv_forward_naive(np.zeros((1, 1, 5, 5)), np.zeros((1, 1, 3, 3)), np.zeros(1),
                                {"stride": 1, "pad": -1}), ValueError,
     r"conv_param\['pad'\]: expected a non-negative int, got -1"),
    (lambda: conv_forward_naive(np.zeros((1, 1, 5, 5)), np.zeros((1, 1, 3, 3)), np.zeros(1),
                                {"stride": 1}), ValueError, r"conv_param: expected a dict with 'pad'"),
    (lambda: max_pool_forward_naive(np.zeros((1, 1, 4, 4)), {"pool_height": 5, "pool_width": 2,
                                                            "stride": 1}), ValueError,
     r"pool_param\['pool_height'\]: a window of 5 does not fit an input of 4"),
    (lambda: max_pool_forward_naive(np.zeros((1, 1, 4, 4)), {"pool_height": 2, "pool_width": 2,
                                                            "stride": 0}), ValueError,
     r"pool_param\['stride'\]: expected a positive int, got 0"),
    (lambda: softmax_loss(np.zeros((2, 3)), np.array([0, 3])), ValueError, r"y: expected labels in \[0, 3\)"),
    (lambda: dropout_forward(np.zeros(3), {"mode": "train", "p": 0}), ValueError,
     r"dropout_param\['p'\]: expected a number in \(0, 1\]"),
    (lambda: dropout_forward(np.zeros(3), {"mode": "eval", "p": 0.5}), ValueError,
     r"dropout_param\['mode'\]: expected 'train' or 'test', got 'eval'"),
    (lambda: dropout_forward(np.zeros(3), {"mode": "train", "p": 0.5}, p_is="dropped"), ValueError,
     "p_is: expected 'keep' or 'drop'"),
    (lambda: affine_backward(np.zeros((2, 3)), relu_forward(np.zeros((2, 3)))[1]), TypeError,
     "cache: expected the cache returned by affine's forward function, got relu"),
    (lambda: relu_backward(np.zeros((2, 2)), relu_forward(np.zeros((2, 3)))[1]), ValueError,
     r"dout: expected shape \(2, 3\)"),
])
def test_bad_arguments_get_one_line_errors_naming_them(call, error, message):
    with pytest.raises(error, match=message) as caught:
        call()
    assert "\n" not in str(caught.value)


def test_inputs_are_not_modified_and_outputs_are_the_callers():
    rng = np.random.default_rng(1)
    x, w, b = rng.standard_normal((3, 4)), rng.standard_normal((4, 2)), rng.standard_normal(2)
    saved = [v.copy() for v in (x, w, b)]
    out, cache = affine_forward(x, w, b)
    x[:] = 0  # the notebooks reuse their arrays: the cache holds its own copy
    dx, dw, _ = affine_backward(np.ones((3, 2)), cache)
    np.testing.assert_array_equal(dw, saved[0].T @ np.ones((3, 2)))
    dx[:] = 5  # the caller's gradient is its own
    assert not (affine_backward(np.ones((3, 2)), cache)[0] == 5).any()
