"""`tb.explain`: the staged backward stage by stage, its numbers checked against a closed form
written here, and the saved-case round trip `check --save-case` relies on."""

import numpy as np
import pytest

import tinygrad_bn as tb
from tinygrad_bn.check.explain import format_values


def _case(seed=0, shape=(5, 3)):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) * 2 + 1, rng.standard_normal(shape[1]),
            rng.standard_normal(shape[1]), rng.standard_normal(shape))


def test_every_stage_value_and_the_leaf_gradients_are_right():
    x, gamma, beta, dout = _case()
    explanation = tb.explain(x, gamma, beta, dout, eps=1e-5)
    values = explanation.values
    assert list(values)[:10] == ["mu", "xmu", "sq", "var", "var_eps", "sqrtvar", "ivar", "xhat",
                                 "gammax", "out"]
    mu = x.mean(axis=0)
    var = ((x - mu) ** 2).mean(axis=0)
    xhat = (x - mu) / np.sqrt(var + 1e-5)
    np.testing.assert_allclose(values["xhat"][0], xhat, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(values["out"][0], gamma * xhat + beta, rtol=1e-13, atol=1e-14)
    # The closed form, written independently of the library.
    n = x.shape[0]
    g = dout * gamma
    dx = (n * g - g.sum(axis=0) - xhat * (g * xhat).sum(axis=0)) / (n * np.sqrt(var + 1e-5))
    np.testing.assert_allclose(values["dx"][0], dx, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(values["dgamma"][0], (dout * xhat).sum(axis=0), rtol=1e-12)
    np.testing.assert_allclose(values["dbeta"][0], dout.sum(axis=0), rtol=1e-12)
    # The mean's gradient through the variance is zero on paper, rounding-size here.
    assert explanation.mu_via_variance < 1e-13


def test_rows_run_from_the_output_back_and_name_the_branch_sums():
    explanation = tb.explain(*_case())
    assert [row.stage for row in explanation.rows] == [
        "out", "gammax", "xhat", "ivar", "sqrtvar", "var_eps", "var", "sq", "xmu", "mu"]
    xhat_row = explanation.rows[2]
    assert xhat_row.derivative == "d/dxmu = ivar, d/divar = xmu"
    text = "\n".join(explanation.assembly)
    assert "dxmu = dxmu1 + dxmu2" in text and "dx = dx1 + dx2" in text
    assert "dgamma: summed over axis 0" in text


def test_values_print_the_inputs_first():
    x, gamma, beta, dout = _case(shape=(2, 2))
    text = format_values(tb.explain(x, gamma, beta, dout))
    names = [line.split(" = ")[0] for line in text.splitlines() if " = " in line]
    assert names[:5] == ["x", "gamma", "beta", "dout", "mu"]


def test_a_saved_case_is_explained_on_its_own_data(tmp_path):
    x, gamma, beta, dout = _case(seed=3)
    path = tmp_path / "case.npz"
    np.savez(path, kind=np.array("batch"), eps=np.array(1e-3), groups=np.array(0), x=x,
             gamma=gamma, beta=beta, dout=dout)
    loaded = tb.explain(load=path)
    direct = tb.explain(x, gamma, beta, dout, eps=1e-3)
    for name, (value, grad) in direct.values.items():
        assert np.array_equal(loaded.values[name][0], value), name
        if grad is not None:
            assert np.array_equal(loaded.values[name][1], grad), name


def test_what_cannot_be_explained_says_so(tmp_path):
    with pytest.raises(TypeError, match="explain: give x, gamma, beta and dout"):
        tb.explain(np.ones((2, 2)))
    not_a_case = tmp_path / "other.npz"
    np.savez(not_a_case, x=np.ones((2, 2)))
    with pytest.raises(ValueError, match="is not a saved case \\(it lacks kind, gamma, beta, dout\\)"):
        tb.explain(load=not_a_case)
