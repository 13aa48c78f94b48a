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


def _float32_problem(seed: int = 4):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((64, 6)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] * x[:, 2] > 0).astype(int)
    return x, y


@pytest.mark.parametrize("make", [lambda p: SGD(p, lr=0.1),
                                  lambda p: SGD(p, lr=0.1, momentum=0.9),
                                  lambda p: Adam(p, lr=0.01)],
                         ids=["sgd", "momentum", "adam"])
def test_a_float32_mlp_with_batchnorm_trains(make):
    x, y = _float32_problem()
    rng = np.random.default_rng(5)
    net = tb.Sequential(tb.Linear(6, 16, rng=rng), tb.BatchNorm(16), tb.ReLU(),
                        tb.Linear(16, 2, rng=rng))
    # The optimizer is made before the first forward pass, while the parameters are still
    # float64: its state must follow them when they become float32.
    optimizer = make(net.parameters())
    losses = []
    for _ in range(30):
        loss = tb.loss.softmax_cross_entropy(net(x), y)
        assert loss.dtype == np.float32
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert losses[-1] < 0.7 * losses[0]
    assert all(p.dtype == np.float32 and p.grad.dtype == np.float32 for p in net.parameters())
    bn = net.layers[1]
    assert bn.running_mean.dtype == bn.running_var.dtype == np.float32
    state = [getattr(optimizer, name) for name in ("velocity", "m", "v") if hasattr(optimizer, name)]
    assert all(s.dtype == np.float32 for group in state for s in group)


def test_optimizer_state_follows_a_parameter_whose_dtype_changes():
    w = tb.Node(np.array([1.0, -2.0]), name="w")
    optimizer = SGD([w], lr=0.5, momentum=0.5)
    (w * w).sum().backward()
    optimizer.step()  # velocity 2w = [2, -4], w = [0, 0]
    w.data = w.data.astype(np.float32) + np.float32(1)  # as a module following its input does
    optimizer.zero_grad()
    (w * w).sum().backward()
    optimizer.step()  # velocity 0.5 * [2, -4] + [2, 2]
    assert w.dtype == np.float32 and optimizer.velocity[0].dtype == np.float32
    np.testing.assert_array_equal(optimizer.velocity[0], [3.0, 0.0])
    np.testing.assert_array_equal(w.data, [-0.5, 1.0])


def test_a_float32_state_dict_loads_into_a_fresh_model_exactly():
    x, _ = _float32_problem()
    net = tb.Sequential(tb.Linear(6, 4), tb.BatchNorm(4), tb.ReLU())
    net(x)
    state = net.state_dict()
    assert all(a.dtype == np.float32 for a in state.values())
    fresh = tb.Sequential(tb.Linear(6, 4), tb.BatchNorm(4), tb.ReLU())
    fresh.load_state_dict(state)  # a module whose dtype is still open takes the state's
    for key, value in fresh.state_dict().items():
        assert value.dtype == np.float32 and np.array_equal(value, state[key])
    net.eval(), fresh.eval()
    np.testing.assert_array_equal(net(x).data, fresh(x).data)
    # A float64 input afterwards does not change the loaded parameters' dtype.
    assert fresh(x.astype(np.float64)).dtype == np.float64
    assert fresh.layers[0].W.dtype == np.float32


def test_a_state_dict_is_converted_to_a_module_whose_dtype_is_fixed():
    rng = np.random.default_rng(6)
    wide = tb.Linear(3, 2, rng=rng, dtype=np.float64)
    narrow = tb.Linear(3, 2, rng=rng, dtype=np.float32)
    wide.load_state_dict(narrow.state_dict())  # widening: exact
    assert wide.W.dtype == np.float64
    np.testing.assert_array_equal(wide.W.data, narrow.W.data.astype(np.float64))
    source = tb.Linear(3, 2, rng=rng, dtype=np.float64)
    narrow.load_state_dict(source.state_dict())  # narrowing: rounded, as PyTorch's copy does
    assert narrow.W.dtype == np.float32
    np.testing.assert_array_equal(narrow.W.data, source.W.data.astype(np.float32))
    too_big = dict(source.state_dict(), W=np.full((3, 2), 1e300))
    before = narrow.W.data.copy()
    with pytest.raises(ValueError, match=r"state\['W'\]: expected finite values in float32, "
                                         r"got 1e\+300 at index \(0, 0\)"):
        narrow.load_state_dict(too_big)
    np.testing.assert_array_equal(narrow.W.data, before)


def test_a_module_takes_one_dtype_from_a_state_dict():
    bn = tb.BatchNorm(2)
    state = bn.state_dict()
    state["gamma"] = state["gamma"].astype(np.float32)
    with pytest.raises(ValueError, match=r"state: the arrays of one module share one dtype; "
                                         r"got float32 \('gamma'\) and float64 \('beta'"):
        bn.load_state_dict(state)
    assert bn.gamma.dtype == np.float64


def test_an_optimizer_rejects_a_non_leaf_before_changing_anything():
    w = tb.Node(np.array([1.0, 2.0]), name="w")
    with pytest.raises(ValueError, match=r"params\[1\]: expected a leaf Node \(a parameter\), "
                                         r"got the result of 'mul'"):
        SGD([w, w * 2])


@pytest.mark.parametrize("make", [lambda p: SGD(p, lr=0.1, momentum=0.9),
                                  lambda p: Adam(p, lr=0.1)], ids=["sgd", "adam"])
def test_a_step_checks_every_parameter_before_updating_any(make):
    w = tb.Node(np.array([1.0, 2.0]), name="w")
    u = tb.Node(np.array([3.0, 4.0, 5.0]), name="u")
    optimizer = make([w, u])
    (w * w).sum().backward()
    (u * u).sum().backward()
    u.grad = np.ones(2)  # the wrong shape: the step must fail before w moves
    state = {k: [a.copy() for a in v] for k, v in vars(optimizer).items()
             if isinstance(v, list) and k != "params"}
    with pytest.raises(ValueError, match=r"params\[1\] \('u'\): expected a gradient of shape "
                                         r"\(3,\), got shape \(2,\)"):
        optimizer.step()
    np.testing.assert_array_equal(w.data, [1.0, 2.0])
    for key, arrays in state.items():
        for before, after in zip(arrays, getattr(optimizer, key)):
            np.testing.assert_array_equal(before, after)
    assert getattr(optimizer, "t", 0) == 0


@pytest.mark.parametrize("value", [float("inf"), float("nan"), -1.0, 0.0, True, "0.1"])
def test_learning_rates_are_finite_and_positive(value):
    w = tb.Node(np.ones(2))
    for make in (SGD, Adam):
        with pytest.raises(ValueError, match=f"lr: expected a finite number > 0, got {value!r}"):
            make([w], lr=value)
    with pytest.raises(ValueError, match=f"eps: expected a finite number > 0, got {value!r}"):
        Adam([w], eps=value)


@pytest.mark.parametrize("value", [float("inf"), float("nan"), -1.0, 0.0, True])
def test_weight_scale_is_finite_and_positive(value):
    with pytest.raises(ValueError,
                       match=f"weight_scale: expected a finite number > 0, got {value!r}"):
        tb.Linear(2, 2, weight_scale=value)


@pytest.mark.parametrize("field, value, message", [
    ("lr", float("inf"), "lr: expected a finite number > 0, got inf"),
    ("scales", (1e-3, float("nan")), "scales: expected a finite number > 0, got nan"),
    ("momentum", 1.0, r"momentum: expected a number in \[0, 1\), got 1.0"),
    ("steps", 0, "steps: expected a positive int, got 0"),
    ("classes", 1, "classes: expected at least 2, got 1"),
])
def test_experiment_config_rejects_bad_values(field, value, message):
    from tinygrad_bn.train.experiment import ExperimentConfig

    with pytest.raises(ValueError, match=message):
        ExperimentConfig(**{field: value})
