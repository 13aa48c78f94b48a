"""The BatchNorm module: train/eval behaviour, running statistics, bad arguments."""

import numpy as np
import pytest

import tinygrad_bn as tb


@pytest.mark.parametrize("fused", [True, False])
def test_running_averages_make_eval_output_standard(fused):
    rng = np.random.default_rng(0)
    bn = tb.BatchNorm(4, fused=fused)
    scale, shift = np.array([1.0, 3.0, 0.2, 10.0]), np.array([5.0, -2.0, 0.0, 100.0])
    for _ in range(50):
        bn(scale * rng.standard_normal((64, 4)) + shift)
    bn.eval()
    before = (bn.running_mean.copy(), bn.running_var.copy())
    out = bn(scale * rng.standard_normal((2000, 4)) + shift).data
    np.testing.assert_allclose(out.mean(axis=0), 0, atol=0.1)
    np.testing.assert_allclose(out.std(axis=0), 1, atol=0.1)
    # Eval mode leaves the running statistics alone.
    np.testing.assert_array_equal(bn.running_mean, before[0])
    np.testing.assert_array_equal(bn.running_var, before[1])


def test_momentum_weights_the_old_value():
    bn = tb.BatchNorm(2, momentum=0.75)
    x = np.array([[1.0, 2.0], [3.0, 6.0]])
    bn(x)
    np.testing.assert_allclose(bn.running_mean, 0.25 * x.mean(axis=0))
    np.testing.assert_allclose(bn.running_var, 0.75 * 1.0 + 0.25 * x.var(axis=0))


def test_staged_and_fused_modules_agree_and_train_gamma_beta():
    rng = np.random.default_rng(1)
    x, dout = rng.standard_normal((8, 3, 2, 2)), rng.standard_normal((8, 3, 2, 2))
    grads = []
    for fused in (True, False):
        bn = tb.BatchNorm(3, fused=fused)
        node = tb.Node(x)
        bn(node).backward(dout)
        grads.append((node.grad, bn.gamma.grad, bn.beta.grad, bn.running_var.copy()))
        assert [p.name for p in bn.parameters()] == ["gamma", "beta"]
    for a, b in zip(*grads):
        assert tb.scaled_error(a, b) < 1e-12


def test_eval_forward_has_gradients_too():
    bn = tb.BatchNorm(3).eval()
    x = tb.Node(np.ones((2, 3)))
    bn(x).backward(np.ones((2, 3)))
    np.testing.assert_allclose(x.grad, np.full((2, 3), 1 / np.sqrt(1 + 1e-5)))
    np.testing.assert_allclose(bn.gamma.grad, 2 / np.sqrt(1 + 1e-5))


def test_bad_arguments_and_state_is_kept():
    for kwargs, message in [({"momentum": 1.5}, "momentum: expected a number in \\[0, 1\\], got 1.5"),
                            ({"eps": 0.0}, "eps: expected a finite number > 0, got 0.0"),
                            ({"num_features": 0}, "num_features: expected a positive int, got 0")]:
        with pytest.raises(ValueError, match=message):
            tb.BatchNorm(**{"num_features": 3, **kwargs})
    with pytest.raises(TypeError, match="dtype: expected float32 or float64"):
        tb.BatchNorm(3, dtype=np.int32)
    bn = tb.BatchNorm(3)
    bn(np.random.default_rng(0).standard_normal((5, 3)))
    state = (bn.running_mean.copy(), bn.running_var.copy())
    with pytest.raises(ValueError, match=r"x: expected shape \(N, 3\) or \(N, 3, H, W\), got \(5, 4\)"):
        bn(np.ones((5, 4)))
    with pytest.raises(ValueError, match="hold no values"):
        bn(np.ones((0, 3)))
    with pytest.raises(TypeError, match="x: expected real numbers"):
        bn(np.ones((2, 3), dtype=bool))
    np.testing.assert_array_equal(bn.running_mean, state[0])
    np.testing.assert_array_equal(bn.running_var, state[1])


def test_train_under_no_grad_still_updates_statistics():
    bn = tb.BatchNorm(2)
    with tb.no_grad():
        out = bn(np.array([[0.0, 2.0], [2.0, 4.0]]))
    assert out.parents == ()
    np.testing.assert_allclose(bn.running_mean, [0.1, 0.3])


def _trained_batchnorm():
    bn = tb.BatchNorm(3)
    bn(np.random.default_rng(7).standard_normal((6, 3)))
    return bn


class _Agreeable(np.ndarray):
    """An array whose every test says nothing is wrong."""

    def any(self, *args, **kwargs):
        return False


@pytest.mark.parametrize("key, value, message", [
    ("running_var", np.array([1.0, -0.5, 1.0]),
     r"state\['running_var'\]: expected variances >= 0, got -0.5 at index \(1,\)"),
    ("running_mean", np.array([0.0, np.nan, 0.0]),
     r"state\['running_mean'\]: expected finite values in float64, got nan at index \(1,\)"),
    ("gamma", np.array([1.0, 1.0, np.inf]),
     r"state\['gamma'\]: expected finite values in float64, got inf at index \(2,\)"),
    ("beta", [0.0, 0.0, 0.0], r"state\['beta'\]: expected a numpy array, got list"),
    ("gamma", tb.Node(np.ones(3)), r"state\['gamma'\]: expected a numpy array, got Node"),
    ("running_var", np.ones(3, dtype=np.int64),
     r"state\['running_var'\]: expected a float32 or float64 array, got int64"),
    # A subclass's own rules hide nothing: a mask over every entry, a matrix.
    ("running_var", np.ma.masked_array([np.nan, -1.0, np.inf], mask=True),
     r"state\['running_var'\]: expected finite values in float64, got nan at index \(0,\)"),
    ("running_var", np.ma.masked_array([1.0, -1.0, 1.0], mask=[False, True, False]),
     r"state\['running_var'\]: expected variances >= 0, got -1.0 at index \(1,\)"),
    ("gamma", np.array([1.0, np.inf, 1.0]).view(_Agreeable),
     r"state\['gamma'\]: expected finite values in float64, got inf at index \(1,\)"),
])
def test_load_state_dict_rejects_bad_values_and_changes_nothing(key, value, message):
    bn = _trained_batchnorm()
    before = bn.state_dict()
    state = dict(before, **{key: value})
    with pytest.raises(ValueError, match=message):
        bn.load_state_dict(state)
    for name, array in bn.state_dict().items():
        np.testing.assert_array_equal(array, before[name])


@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 2, 5)])
def test_running_variance_conventions_against_torch(unbiased, shape):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(8)
    bn = tb.BatchNorm(3, momentum=0.9, unbiased_running_var=unbiased)
    reference = (torch.nn.BatchNorm1d if len(shape) == 2 else torch.nn.BatchNorm2d)(
        3, momentum=0.1, dtype=torch.float64)  # torch's momentum weighs the new value
    biased_mean_var = np.ones(3)
    for _ in range(3):
        x = rng.standard_normal(shape) * 2 + 1
        bn(x)
        reference(torch.from_numpy(x))
        axes = (0,) if len(shape) == 2 else (0, 2, 3)
        biased_mean_var = 0.9 * biased_mean_var + 0.1 * x.var(axis=axes)
    np.testing.assert_allclose(bn.running_mean, reference.running_mean.numpy(), rtol=1e-12)
    if unbiased:  # torch's convention
        np.testing.assert_allclose(bn.running_var, reference.running_var.numpy(), rtol=1e-12)
    else:  # the CS231n convention: the biased batch variance
        np.testing.assert_allclose(bn.running_var, biased_mean_var, rtol=1e-12)
        assert not np.allclose(bn.running_var, reference.running_var.numpy(), rtol=1e-3)
    assert ("unbiased_running_var=True" in repr(bn)) == unbiased
