"""The layers to train with every normalization, the loss, the optimizers and the experiment."""

import numpy as np
import pytest

import tinygrad_bn as tb
from tinygrad_bn.cli import main as cli_main
from tinygrad_bn.train.experiment import ExperimentConfig, make_dataset, run_experiment
from tinygrad_bn.train.loss import softmax_cross_entropy
from tinygrad_bn.train.optim import SGD, Adam


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
