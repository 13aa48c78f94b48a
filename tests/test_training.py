"""Training semantics a PyTorch user relies on."""

import numpy as np
import pytest

import tinygrad_bn as tb
from tinygrad_bn.train.optim import SGD, Adam


def test_zero_grad_after_a_freed_graph_clears_the_leaves():
    x = tb.Node(np.array([1.0, 2.0]), name="x")
    for _ in range(3):
        loss = (x * x).sum()
        loss.backward(free_graph=True)
        np.testing.assert_array_equal(x.grad, [2.0, 4.0])  # not [4, 8], [6, 12]
        loss.zero_grad()
        assert x.grad is None and loss.grad is None


def test_tied_weights_are_one_parameter_updated_once():
    rng = np.random.default_rng(0)
    lin = tb.Linear(3, 3, rng=rng)
    net = tb.Sequential(lin, tb.ReLU(), lin)
    assert net.parameters() == [lin.W, lin.b]
    assert [name for name, _ in net.named_parameters()] == ["layers.0.W", "layers.0.b"]
    before = lin.W.data.copy()
    loss = net(rng.standard_normal((4, 3))).sum()
    loss.backward()
    SGD(net.parameters(), lr=0.1).step()
    np.testing.assert_allclose(lin.W.data, before - 0.1 * lin.W.grad)  # one step, not two
    with pytest.raises(ValueError, match=r"params\[2\]: the same parameter as params\[0\]"):
        SGD([lin.W, lin.b, lin.W])


def test_a_parameter_stepped_after_the_forward_pass_is_caught():
    rng = np.random.default_rng(1)
    w = tb.Node(rng.standard_normal(3), name="w")
    optimizer = SGD([w], lr=0.5)
    loss_a = (w * w).sum()
    loss_b = (w * w * w).sum()
    loss_a.backward()
    optimizer.step()
    with pytest.raises(ValueError, match="'w' was given a new value .* after this graph was "
                                         "built from its old one"):
        loss_b.backward()
    optimizer.zero_grad()
    (w * w).sum().backward()  # a graph built after the step is fine
    np.testing.assert_allclose(w.grad, 2 * w.data)


def test_optimizers_never_write_into_the_callers_array():
    for make in (lambda p: SGD(p, lr=0.1, momentum=0.9), lambda p: Adam(p, lr=0.1)):
        a = np.array([1.0, -2.0])
        w = tb.Node(a)
        (w * w).sum().backward()
        make([w]).step()
        np.testing.assert_array_equal(a, [1.0, -2.0])
        assert not np.array_equal(w.data, a)


def test_batchnorm_module_needs_two_values_per_channel_to_train():
    bn = tb.BatchNorm(4)
    with pytest.raises(ValueError, match=r"x: expected more than 1 value per channel when "
                                         r"training, got input shape \(1, 4\)"):
        bn(np.ones((1, 4)))
    np.testing.assert_array_equal(bn.running_mean, np.zeros(4))  # nothing moved
    bn.eval()
    assert bn(np.ones((1, 4))).shape == (1, 4)


def test_modules_follow_the_input_dtype():
    x = np.random.default_rng(2).standard_normal((8, 4)).astype(np.float32)
    net = tb.Sequential(tb.Linear(4, 4), tb.BatchNorm(4), tb.ReLU(), tb.LayerNorm(4))
    out = net(x)
    assert out.dtype == np.float32
    assert all(p.dtype == np.float32 for p in net.parameters())
    assert net.layers[1].running_mean.dtype == np.float32
    net.eval()
    assert net(x).dtype == np.float32


def test_state_dict_round_trip_is_exact_and_checks_shapes():
    rng = np.random.default_rng(3)
    net = tb.Sequential(tb.Linear(4, 3, rng=rng), tb.BatchNorm(3), tb.ReLU())
    net(rng.standard_normal((5, 4)))
    state = net.state_dict()
    assert sorted(state) == ["layers.0.W", "layers.0.b", "layers.1.beta", "layers.1.gamma",
                             "layers.1.running_mean", "layers.1.running_var"]
    other = tb.Sequential(tb.Linear(4, 3), tb.BatchNorm(3), tb.ReLU())
    other.load_state_dict(state)
    for key, value in other.state_dict().items():
        assert value.dtype == state[key].dtype and np.array_equal(value, state[key])
    x = rng.standard_normal((5, 4))
    net.eval(), other.eval()
    np.testing.assert_array_equal(net(x).data, other(x).data)
    bad = dict(state, **{"layers.0.W": np.zeros((3, 4))})
    with pytest.raises(ValueError, match=r"state\['layers.0.W'\]: expected shape \(4, 3\)"):
        other.load_state_dict(bad)
    with pytest.raises(KeyError, match="missing \\['layers.1.gamma'\\]"):
        other.load_state_dict({k: v for k, v in state.items() if k != "layers.1.gamma"})


def test_reprs_read_like_pytorch():
    net = tb.Sequential(tb.Linear(4, 4), tb.ReLU(), tb.BatchNorm(4), tb.LayerNorm(4),
                        tb.GroupNorm(2, 4))
    assert repr(net) == ("Sequential(Linear(4, 4), ReLU(), BatchNorm(4, eps=1e-05, "
                         "momentum=0.9, fused=True), LayerNorm(4, eps=1e-05, fused=True), "
                         "GroupNorm(2, 4, eps=1e-05, fused=True))")
    x = tb.Node(np.array([[1.0, 2.0]]), name="x")
    assert repr(x) == "Node([[1., 2.]], name='x')"
    y = (x * 2).sum()
    y.backward()
    assert repr(x) == "Node([[1., 2.]], name='x', grad=[[2., 2.]])"
    assert repr(y) == "Node(6., op='sum', grad=1.)"
    big = repr(tb.Node(np.arange(100.0)))
    assert "..." in big and len(big) < 120
    assert "dtype=float32" in repr(tb.Node(np.ones(2, np.float32)))
