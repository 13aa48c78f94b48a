"""Layer, spatial batch and group norm; the layers to train with them; the experiment."""

import numpy as np
import pytest
from numeric import eval_numerical_gradient_array

import tinygrad_bn as tb
from tinygrad_bn.cli import main as cli_main
from tinygrad_bn.cli import sample_batch
from tinygrad_bn.cs231n import (
    layernorm_backward,
    layernorm_forward,
    spatial_batchnorm_backward,
    spatial_batchnorm_forward,
    spatial_groupnorm_backward,
    spatial_groupnorm_forward,
)
from tinygrad_bn.train.experiment import ExperimentConfig, make_dataset, run_experiment
from tinygrad_bn.train.loss import softmax_cross_entropy
from tinygrad_bn.train.optim import SGD, Adam

CASES = [
    ("layer", (1, 3), None), ("layer", (4, 5), None), ("layer", (50, 20), None),
    ("layer", (3, 2, 4, 5), None),
    ("spatial", (2, 3, 4, 5), None), ("spatial", (1, 2, 1, 1), None),
    ("group", (2, 6, 4, 5), 2), ("group", (2, 6, 4, 5), 6), ("group", (3, 4, 2, 3), 1),
]


@pytest.mark.parametrize("kind,shape,groups", CASES)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_staged_fused_numeric_agree(kind, shape, groups, dtype):
    x, gamma, beta, dout = sample_batch(shape, dtype, seed=2, kind=kind, groups=groups)
    report = tb.compare_normalization(kind, x, gamma, beta, dout, groups=groups)
    assert report.ok, str(report)
    pair, numeric = (1e-10, 1e-8) if dtype == "float64" else (3e-5, 3e-5)
    for row in report.errors.values():
        assert row["staged~fused"] < pair
        assert max(row["staged~numeric"], row["fused~numeric"]) < numeric


def test_each_norm_normalizes_the_right_axes():
    rng = np.random.default_rng(0)
    x = 3 * rng.standard_normal((4, 6, 5, 5)) + 2
    ones, zeros = np.ones(6), np.zeros(6)
    layer = tb.layernorm_fused(x, np.ones((6, 5, 5)), np.zeros((6, 5, 5))).data
    np.testing.assert_allclose(layer.mean(axis=(1, 2, 3)), 0, atol=1e-12)
    spatial = tb.spatial_batchnorm_staged(x, ones, zeros).data
    np.testing.assert_allclose(spatial.mean(axis=(0, 2, 3)), 0, atol=1e-12)
    group = tb.groupnorm_fused(x, ones, zeros, 3).data.reshape(4, 3, 2, 5, 5)
    np.testing.assert_allclose(group.mean(axis=(2, 3, 4)), 0, atol=1e-12)
    np.testing.assert_allclose(group.var(axis=(2, 3, 4)), 1, rtol=1e-3)
    assert tb.groupnorm_fused(x, ones, zeros, 3).op == "groupnorm"
    assert tb.layernorm_fused(x[:, :, 0, 0], ones, zeros).op == "layernorm"


def test_staged_group_norm_has_every_stage():
    x = tb.Node(np.random.default_rng(0).standard_normal((2, 4, 3, 3)))
    out = tb.groupnorm_staged(x, np.ones(4), np.zeros(4), 2)
    stages = tb.stages(out)
    assert set(tb.STAGE_NAMES) <= set(stages) and stages["mu"].shape == (2, 2, 1, 1, 1)


def test_bad_input():
    x4 = np.ones((2, 6, 3, 3))
    with pytest.raises(ValueError, match="groups: expected a divisor of the channel count C=6, got 4"):
        tb.groupnorm_fused(x4, np.ones(6), np.zeros(6), 4)
    with pytest.raises(ValueError, match="groups: expected a positive int, got 0"):
        tb.groupnorm_staged(x4, np.ones(6), np.zeros(6), 0)
    with pytest.raises(ValueError, match=r"x: expected shape \(N, C, H, W\), got \(2, 6\)"):
        tb.groupnorm_fused(np.ones((2, 6)), np.ones(6), np.zeros(6), 2)
    with pytest.raises(ValueError, match=r"x: expected shape \(N, C, H, W\), got \(2, 6\)"):
        tb.spatial_batchnorm_fused(np.ones((2, 6)), np.ones(6), np.zeros(6))
    with pytest.raises(ValueError, match=r"x: expected shape \(N, D\) or"):
        tb.layernorm_staged(np.ones(6), np.ones(6), np.zeros(6))
    with pytest.raises(ValueError, match=r"gamma: expected shape \(6,\).*got shape \(3,\)"):
        tb.groupnorm_fused(x4, np.ones(3), np.zeros(6), 2)
    with pytest.raises(ValueError, match=r"gamma: expected shape \(5,\).*got shape \(4,\)"):
        tb.layernorm_fused(np.ones((2, 5)), np.ones(4), np.zeros(5))


# --- the assignment's functions at the assignment's sizes ---------------------------------
def check_cs231n(forward, backward, x, gamma, beta, dout, tol, dx_tol=None):
    fx = lambda a: forward(a, gamma, beta)[0]  # noqa: E731
    fg = lambda a: forward(x, a, beta)[0]  # noqa: E731
    fb = lambda a: forward(x, gamma, a)[0]  # noqa: E731
    numeric = [eval_numerical_gradient_array(fx, x, dout),
               eval_numerical_gradient_array(fg, gamma.copy(), dout),
               eval_numerical_gradient_array(fb, beta.copy(), dout)]
    _, cache = forward(x, gamma, beta)
    for analytic, expected, limit in zip(backward(dout, cache), numeric, (dx_tol or tol, tol, tol)):
        assert analytic.shape == expected.shape
        assert tb.rel_error(analytic, expected) < limit


def test_cs231n_layernorm():
    np.random.seed(231)
    N, D = 4, 5
    x = 5 * np.random.randn(N, D) + 12
    gamma, beta, dout = np.random.randn(D), np.random.randn(D), np.random.randn(N, D)
    check_cs231n(lambda a, g, b: layernorm_forward(a, g, b, {}), layernorm_backward,
                 x, gamma, beta, dout, 1e-8)
    out, _ = layernorm_forward(x, np.ones(D), np.zeros(D), {"eps": 1e-5})
    np.testing.assert_allclose(out.mean(axis=1), 0, atol=1e-12)


def test_cs231n_spatial_batchnorm():
    np.random.seed(231)
    N, C, H, W = 2, 3, 4, 5
    x = 5 * np.random.randn(N, C, H, W) + 12
    gamma, beta, dout = np.random.randn(C), np.random.randn(C), np.random.randn(N, C, H, W)
    forward = lambda a, g, b: spatial_batchnorm_forward(a, g, b, {"mode": "train"})  # noqa: E731
    # With this seed some dx entries are ~1e-4 of the largest, and the notebook's float64
    # central differences carry ~3e-7 relative error there (for any correct code): the
    # notebook itself expects 1e-12 to 1e-6. Against central differences in extended
    # precision the staged backward is exact to 1e-8 elementwise.
    check_cs231n(forward, spatial_batchnorm_backward, x, gamma, beta, dout, 1e-8, dx_tol=1e-6)
    dx = spatial_batchnorm_backward(dout, forward(x, gamma, beta)[1])[0]
    g, b = gamma.reshape(1, C, 1, 1), beta.reshape(1, C, 1, 1)

    def extended(a):
        xmu = a - a.mean(axis=(0, 2, 3), keepdims=True)
        var = (xmu * xmu).mean(axis=(0, 2, 3), keepdims=True)
        return g * xmu / np.sqrt(var + np.longdouble(1e-5)) + b

    reference = tb.numerical_gradient(extended, x.astype(np.longdouble), dout)
    assert tb.rel_error(dx, reference) < 1e-8
    bn_param = {"mode": "train"}
    spatial_batchnorm_forward(x, gamma, beta, bn_param)
    np.testing.assert_allclose(bn_param["running_mean"], 0.1 * x.mean(axis=(0, 2, 3)))
    out, cache = spatial_batchnorm_forward(x, np.ones(C), np.zeros(C), {**bn_param, "mode": "test"})
    assert cache is None and out.shape == x.shape


def test_cs231n_groupnorm():
    np.random.seed(231)
    N, C, H, W, G = 2, 6, 4, 5, 2
    x = 5 * np.random.randn(N, C, H, W) + 12
    gamma = np.random.randn(1, C, 1, 1)
    beta = np.random.randn(1, C, 1, 1)
    dout = np.random.randn(N, C, H, W)
    check_cs231n(lambda a, g, b: spatial_groupnorm_forward(a, g, b, G, {}),
                 spatial_groupnorm_backward, x, gamma, beta, dout, 1e-7)
    with pytest.raises(ValueError, match="groups: expected a divisor"):
        spatial_groupnorm_forward(x, gamma, beta, 4, {})


# --- modules, loss, optimizers ----------------------------------------------------------
@pytest.mark.parametrize("fused", [True, False])
def test_layer_and_group_norm_modules(fused):
    rng = np.random.default_rng(0)
    ln = tb.nn.LayerNorm(5, fused=fused)
    x = rng.standard_normal((3, 5)) * 4 + 1
    train_out = ln(x).data
    assert np.array_equal(ln.eval()(x).data, train_out)  # no running statistics
    np.testing.assert_allclose(train_out.mean(axis=1), 0, atol=1e-12)
    gn = tb.nn.GroupNorm(2, 4, fused=fused)
    out = gn(tb.Node(rng.standard_normal((2, 4, 3, 3))))
    out.backward(np.ones(out.shape))
    assert gn.gamma.grad.shape == (4,) and [p.name for p in gn.parameters()] == ["gamma", "beta"]
    with pytest.raises(ValueError, match="num_groups: expected a divisor of num_channels=4"):
        tb.nn.GroupNorm(3, 4)
    with pytest.raises(ValueError, match=r"x: expected shape \(N, 5\), got \(3, 4\)"):
        ln(np.ones((3, 4)))


def test_softmax_cross_entropy_value_and_gradient():
    logits = np.array([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    labels = np.array([1, 2])
    loss = softmax_cross_entropy(tb.Node(logits), labels)
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    assert loss.item() == pytest.approx(-(log_probs[0, 1] + log_probs[1, 2]) / 2)
    assert tb.gradcheck(lambda a: softmax_cross_entropy(a, labels), logits, tol=1e-8)
    with pytest.raises(ValueError, match=r"labels: expected values in \[0, 3\)"):
        softmax_cross_entropy(tb.Node(logits), np.array([0, 3]))
    with pytest.raises(ValueError, match="labels: expected 2 integers"):
        softmax_cross_entropy(tb.Node(logits), np.array([0.0, 1.0]))


@pytest.mark.parametrize("make_optimizer", [lambda p: SGD(p, lr=0.1, momentum=0.9),
                                            lambda p: Adam(p, lr=0.01)])
def test_short_training_run_lowers_the_loss(make_optimizer):
    x, y = make_dataset(200, 8, 3, seed=0)
    rng = np.random.default_rng(0)
    net = tb.nn.Sequential(tb.nn.Linear(8, 32, rng=rng), tb.nn.BatchNorm(32), tb.nn.ReLU(),
                           tb.nn.Linear(32, 32, rng=rng), tb.nn.LayerNorm(32), tb.nn.ReLU(),
                           tb.nn.Linear(32, 3, rng=rng))
    assert len(net.parameters()) == 10
    optimizer = make_optimizer(net.parameters())
    losses = []
    for _ in range(60):
        loss = softmax_cross_entropy(net(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    net.eval()
    assert not net.layers[1].training


def test_optimizer_arguments_are_checked():
    with pytest.raises(ValueError, match="lr: expected a finite number > 0, got 0"):
        SGD([tb.Node(1.0)], lr=0)
    with pytest.raises(ValueError, match=r"beta1: expected a number in \[0, 1\), got 1.0"):
        Adam([tb.Node(1.0)], beta1=1.0)
    with pytest.raises(TypeError, match="params\\[0\\]: expected a Node"):
        SGD([np.ones(2)])


# --- the experiment ------------------------------------------------------------------------
def test_quick_experiment_shows_batch_norm_rescuing_tiny_init(capsys):
    assert cli_main(["experiment", "--quick"]) == 0
    text = capsys.readouterr().out
    rows = [line.split() for line in text.splitlines() if line.strip().startswith("0.001 ")]
    loss_row = rows[0]  # scale, none loss / acc, batch loss / acc, layer loss / acc
    none_loss, none_acc = float(loss_row[1]), float(loss_row[3])
    batch_loss, batch_acc = float(loss_row[4]), float(loss_row[6])
    assert batch_loss < none_loss and batch_acc > none_acc + 0.2
    assert "activation std per hidden layer at init" in text
    assert "std of d(loss)/d(activation) per hidden layer at init" in text


def test_experiment_is_reproducible():
    config = ExperimentConfig(scales=(1e-2,), steps=5, samples=200)
    first, second = run_experiment(config), run_experiment(config)
    assert first.runs.keys() == second.runs.keys()
    for key in first.runs:
        assert first.runs[key].loss == second.runs[key].loss
        assert first.runs[key].activation_std == second.runs[key].activation_std
