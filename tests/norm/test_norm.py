"""Batch norm staged vs fused vs numeric, the stage graph, and bad input."""

import numpy as np
import pytest

import tinygrad_bn as tb
from tinygrad_bn.check.gradcheck import scaled_error
from tinygrad_bn.cli import sample_batch

SHAPES = [(1, 3), (4, 5), (200, 50), (2, 3, 4, 5)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_staged_fused_numeric_agree(shape, dtype):
    x, gamma, beta, dout = sample_batch(shape, dtype, seed=1)
    report = tb.compare_batchnorm(x, gamma, beta, dout)
    assert report.ok, str(report)
    limit = {"float64": (1e-10, 1e-8), "float32": (1e-4, 1e-4)}[dtype]
    for row in report.errors.values():
        assert row["staged~fused"] < limit[0]
        assert row["staged~numeric"] < limit[1] and row["fused~numeric"] < limit[1]
    assert report.forward_max_abs_diff < (1e-10 if dtype == "float64" else 1e-4) * 10


def test_small_batch_matches_cs231n_elementwise_rel_error():
    # At the assignment's size its own elementwise measure is meaningful: use it directly.
    x, gamma, beta, dout = sample_batch((4, 5), "float64", seed=3)
    xs = tb.Node(x)
    out = tb.batchnorm_staged(xs, gamma, beta)
    out.backward(dout)

    def f(a):
        return tb.batchnorm_fused(a, gamma, beta).data

    numeric = tb.numerical_gradient(f, x.copy(), dout)
    assert tb.rel_error(xs.grad, numeric) < 1e-8


def test_stage_nodes_are_named_and_carry_gradients():
    x = tb.Node(np.random.default_rng(0).standard_normal((6, 4)), name="x")
    gamma, beta = tb.Node(np.ones(4), name="gamma"), tb.Node(np.zeros(4), name="beta")
    out = tb.batchnorm_staged(x, gamma, beta)
    out.backward(np.random.default_rng(1).standard_normal((6, 4)))
    stages = tb.stages(out)
    for name in tb.STAGE_NAMES:
        assert stages[name].grad is not None and stages[name].grad.shape == stages[name].shape
    assert [stages[n].op for n in tb.STAGE_NAMES] == [
        "mean", "sub", "pow", "mean", "add", "sqrt", "div", "mul", "mul", "add"]
    assert stages["mu"].shape == (1, 4) and stages["xhat"].shape == (6, 4)


def test_fused_is_one_node():
    x = tb.Node(np.ones((3, 2)))
    out = tb.batchnorm_fused(x, np.ones(2), np.zeros(2))
    assert out.op == "batchnorm" and len(out.parents) == 3 and out.parents[0] is x


def test_train_output_has_beta_mean_and_gamma_std():
    rng = np.random.default_rng(0)
    x = 3 * rng.standard_normal((500, 4)) + 7
    gamma, beta = np.array([1.0, 2.0, 0.5, 3.0]), np.array([0.0, -1.0, 4.0, 2.0])
    for fn in (tb.batchnorm_staged, tb.batchnorm_fused):
        out = fn(x, gamma, beta).data
        np.testing.assert_allclose(out.mean(axis=0), beta, atol=1e-12)
        np.testing.assert_allclose(out.std(axis=0), gamma, rtol=1e-5)


def test_nchw_normalizes_each_channel():
    x = np.random.default_rng(0).standard_normal((3, 2, 4, 5)) * 4 + 1
    out = tb.batchnorm_fused(x, np.ones(2), np.zeros(2)).data
    np.testing.assert_allclose(out.mean(axis=(0, 2, 3)), 0, atol=1e-12)
    np.testing.assert_allclose(out.var(axis=(0, 2, 3)), 1, rtol=1e-4)


def test_batch_of_one_gives_beta_and_finite_gradients():
    x = tb.Node(np.array([[1.0, -2.0, 3.0]]))
    beta = np.array([0.5, 0.25, -1.0])
    for fn in (tb.batchnorm_staged, tb.batchnorm_fused):
        x.zero_grad()
        out = fn(x, np.full(3, 2.0), beta)
        np.testing.assert_array_equal(out.data, [beta])
        out.backward(np.ones((1, 3)))
        assert np.all(np.isfinite(x.grad))


@pytest.mark.parametrize("fn", [tb.batchnorm_staged, tb.batchnorm_fused])
def test_bad_input(fn):
    x = np.ones((4, 3))
    with pytest.raises(ValueError, match=r"gamma: expected shape \(3,\).*got shape \(4,\)"):
        fn(x, np.ones(4), np.zeros(3))
    with pytest.raises(ValueError, match=r"beta: expected shape \(3,\).*got shape \(3, 1\)"):
        fn(x, np.ones(3), np.zeros((3, 1)))
    with pytest.raises(ValueError, match=r"axis: expected values in \[-2, 2\).*got 2"):
        fn(x, np.ones(3), np.zeros(3), axis=2)
    with pytest.raises(ValueError, match="x: the reduced axes .* hold no values"):
        fn(np.ones((0, 3)), np.ones(3), np.zeros(3))
    for eps in (0, -1e-5, float("nan"), "1e-5"):
        with pytest.raises(ValueError, match=f"eps: expected a finite number > 0, got {eps!r}"):
            fn(x, np.ones(3), np.zeros(3), eps=eps)
    with pytest.raises(TypeError, match="x: expected real numbers.*dtype <U1"):
        fn(np.array([["a"]]), np.ones(1), np.zeros(1))
    with pytest.raises(ValueError, match="axis: no default for x with 3 dimensions"):
        fn(np.ones((2, 3, 4)), np.ones(3), np.zeros(3))


def test_nan_input_propagates_and_compare_fails():
    x, gamma, beta, dout = sample_batch((4, 3), "float64", seed=0)
    x[1, 2] = np.nan
    with np.errstate(invalid="ignore"):
        out = tb.batchnorm_fused(x, gamma, beta)
        assert np.isnan(out.data[:, 2]).all() and np.isfinite(out.data[:, :2]).all()
        report = tb.compare_batchnorm(x, gamma, beta, dout)
    assert not report.ok and "FAILED" in str(report)


def test_far_from_zero_data_stays_exact():
    # mean 1e4, std 1e-2: a variance that cancels catastrophically would show here.
    rng = np.random.default_rng(0)
    x = 1e4 + 1e-2 * rng.standard_normal((64, 8))
    gamma, beta, dout = rng.standard_normal(8), rng.standard_normal(8), rng.standard_normal((64, 8))
    grads = []
    for fn in (tb.batchnorm_staged, tb.batchnorm_fused):
        node = tb.Node(x)
        fn(node, gamma, beta).backward(dout)
        grads.append(node.grad)
    # The exact answer, in extended precision from the same float64 inputs.
    xl = x.astype(np.longdouble)
    xmu = xl - xl.mean(axis=0)
    ivar = 1 / np.sqrt((xmu * xmu).mean(axis=0) + np.longdouble(1e-5))
    xhat, g = xmu * ivar, dout * gamma
    exact = ivar * (g - g.mean(axis=0) - xhat * (g * xhat).mean(axis=0))
    assert scaled_error(grads[0], grads[1]) < 1e-10
    for grad in grads:
        assert scaled_error(grad, exact.astype(np.float64)) < 1e-9


def test_gradcheck_reports_failures_truthfully():
    def wrong(a):
        return tb.Node._result(a.data * 2, tb.ops.Neg, (a,), {}, True)  # VJP says -1, truth 2

    result = tb.gradcheck(wrong, np.ones(3))
    assert not result.ok and not bool(result) and result.errors["input0"] > 0.5
    assert tb.gradcheck(lambda a: (a * a).sum(), np.arange(1.0, 4.0))


def test_cached_argument_checks_still_reject_lookalikes():
    x = np.random.default_rng(0).standard_normal((4, 3))
    tb.batchnorm_fused(x, np.ones(3), np.zeros(3), eps=1, axis=0)  # valid, now cached
    with pytest.raises(ValueError, match="eps: expected a finite number > 0, got True"):
        tb.batchnorm_fused(x, np.ones(3), np.zeros(3), eps=True, axis=0)
    with pytest.raises(TypeError, match="axis: expected int or tuple of ints, got True"):
        tb.batchnorm_fused(x, np.ones(3), np.zeros(3), axis=True)
    with pytest.raises(TypeError, match="axis: expected int or tuple of ints"):
        tb.Node(x).sum(axis=[[0]])


@pytest.mark.parametrize("kind, shape, groups", [("batch", (4, 3), None), ("spatial", (2, 3, 2, 2), None),
                                                 ("layer", (4, 3), None), ("group", (2, 4, 2, 2), 2)])
def test_a_spec_names_its_kind_in_the_word_norm_spec_takes(kind, shape, groups):
    spec = tb.norm.norm_spec(kind, shape, groups=groups)
    assert spec.kind == kind
    assert tb.norm.norm_spec(spec.kind, shape, groups=groups) == spec
    assert spec.title == {"batch": "batch norm", "spatial": "spatial batch norm",
                          "layer": "layer norm", "group": "group norm"}[kind]


def test_norm_spec_refuses_what_it_would_ignore():
    with pytest.raises(ValueError, match="^kind: expected one of batch, spatial, layer, group, "
                                         "got 'batchnorm'"):
        tb.norm.norm_spec("batchnorm", (4, 3))
    with pytest.raises(ValueError, match="^axis: only batch norm takes an axis \\(layer norm reduces"):
        tb.norm.norm_spec("layer", (4, 3), axis=0)
    with pytest.raises(ValueError, match="^groups: only group norm takes a group count, got 2 for "
                                         "spatial batch norm"):
        tb.norm.norm_spec("spatial", (2, 4, 2, 2), groups=2)
    # The same words reach the public functions that take a kind.
    with pytest.raises(ValueError, match="^axis: only batch norm"):
        tb.norm_staged("layer", np.ones((4, 3)), np.ones(3), np.zeros(3), axis=0)


def test_every_kinds_spec_is_built_once_and_keyed_by_all_its_arguments():
    from tinygrad_bn.norm.spec import groupnorm_spec, layernorm_spec, spatial_batchnorm_spec

    first = layernorm_spec((4, 3))
    assert layernorm_spec((4, 3)) is first  # cached: the same immutable spec
    assert layernorm_spec([4, 3]) is first  # a list shape is the same key as the tuple
    assert layernorm_spec((4, 3), 1e-3).eps == 1e-3 and layernorm_spec((4, 3), eps=1e-3).eps == 1e-3
    assert layernorm_spec((5, 3)).x_shape == (5, 3) and layernorm_spec((4, 3, 2)).param_shape == (3, 2)
    assert spatial_batchnorm_spec((2, 3, 2, 2)).kind == "spatial"
    assert tb.norm.norm_spec("batch", (2, 3, 2, 2)).kind == "batch"  # not spatial's spec
    assert groupnorm_spec((2, 4, 2, 2), 2).grouped_shape == (2, 2, 2, 2, 2)
    assert groupnorm_spec((2, 4, 2, 2), 4).grouped_shape == (2, 4, 1, 2, 2)
    assert first.count == 3 and first.param_sum_axes == (0,)
    # Lookalike arguments are other keys, and bad ones raise on every call, cached or not.
    assert layernorm_spec((4, 3), 1).eps == 1.0
    for _ in range(2):
        with pytest.raises(ValueError, match="eps: expected a finite number > 0, got True"):
            layernorm_spec((4, 3), True)
        with pytest.raises(ValueError, match="eps: expected a finite number > 0, got nan"):
            layernorm_spec((4, 3), float("nan"))
        with pytest.raises(ValueError, match="G: expected a divisor of the channel count C=4, got 3"):
            groupnorm_spec((2, 4, 2, 2), 3, argname="G")
        with pytest.raises(ValueError, match="groups: expected a positive int, got True"):
            groupnorm_spec((2, 4, 2, 2), True)
        with pytest.raises(ValueError, match=r"eps: expected a finite number > 0, got \[1\]"):
            layernorm_spec((4, 3), [1])  # not a key: checked without the cache


def test_bad_parameters_after_a_cached_good_call_still_get_their_error():
    x = np.random.default_rng(0).standard_normal((4, 3))
    for kind in ("batch", "layer"):
        tb.norm_fused(kind, tb.Node(x), np.ones(3), np.zeros(3)).backward(np.ones((4, 3)))
        with pytest.raises(ValueError, match=r"gamma: expected shape \(3,\)"):
            tb.norm_fused(kind, tb.Node(x), np.ones(4), np.zeros(3))
        with pytest.raises(ValueError, match=r"beta: expected shape \(3,\)"):
            tb.norm_fused(kind, tb.Node(x), np.ones(3), np.zeros((2, 3)))
