"""The blocked fused kernel, at sizes that take it, and the workspace pool."""

import numpy as np
import pytest

import tinygrad_bn as tb
from tinygrad_bn import kernels, workspace

LARGE = [(512, 256), (1000, 131), (8, 16, 32, 32), (3, 40, 24, 24)]


@pytest.fixture(params=["numpy", "numba"])
def backend(request):
    """Each kernel test runs on the numpy passes and, where numba is installed, compiled."""
    if request.param == "numba":
        pytest.importorskip("numba")
        kernels.use_numba()
    yield request.param
    kernels.use_numba(False)


def exact_gradients(x, gamma, dout, axes):
    """dx, dgamma, dbeta and out in extended precision, from the float inputs."""
    L = np.longdouble
    xl, dl = x.astype(L), dout.astype(L)
    shape = [1 if a in axes else s for a, s in enumerate(x.shape)]
    gl = gamma.astype(L).reshape(shape)
    xmu = xl - xl.mean(axis=axes, keepdims=True)
    inv_std = 1 / np.sqrt((xmu * xmu).mean(axis=axes, keepdims=True) + L(1e-5))
    xhat = xmu * inv_std
    g = dl * gl
    dx = inv_std * (g - g.mean(axis=axes, keepdims=True)
                    - xhat * (g * xhat).mean(axis=axes, keepdims=True))
    return dx, (dl * xhat).sum(axis=axes), dl.sum(axis=axes)


def run(fn, x, gamma, beta, dout):
    nodes = tb.Node(x), tb.Node(gamma), tb.Node(beta)
    out = fn(*nodes)
    out.backward(dout)
    return out, [n.grad for n in nodes]


@pytest.mark.parametrize("shape", LARGE)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("center", [0.0, 3.0, 1e4])
def test_blocked_kernel_matches_staged_and_exact(shape, dtype, center, backend):
    rng = np.random.default_rng(0)
    spread = 1e-2 if center == 1e4 else 1.0
    if center == 1e4 and dtype == np.float32:
        spread = 10.0  # float32 cannot even represent 1e4 + 1e-2 * noise meaningfully
    x = (center + spread * rng.standard_normal(shape)).astype(dtype)
    features = shape[1]
    gamma = rng.standard_normal(features).astype(dtype)
    beta = rng.standard_normal(features).astype(dtype)
    dout = rng.standard_normal(shape).astype(dtype)
    axes = (0,) if len(shape) == 2 else (0, 2, 3)
    assert kernels.layout_for(x, axes) is not None  # this size takes the fast path

    fused_out, fused = run(tb.batchnorm_fused, x, gamma, beta, dout)
    assert fused_out._saved.layout is not None
    staged_out, staged = run(tb.batchnorm_staged, x, gamma, beta, dout)
    exact = exact_gradients(x, gamma, dout, axes)
    if dtype == np.float32:
        # In float32 this much offset leaves only a few digits; the fast path must simply
        # be no less exact than the staged graph it is checked against.
        for f, s, e in zip(fused, staged, exact):
            e = e.astype(np.float64)
            assert tb.scaled_error(f, e) <= 2 * tb.scaled_error(s, e) + 1e-5
            assert tb.scaled_error(f, s) < (1e-4 if center != 1e4 else 1e-2)
        return
    # |mean| / std = 1e6 makes the answer itself uncertain to ~1e-10 in float64 (the
    # staged graph's numpy mean rounds at that level); the shifted one-pass kernel is
    # ten times closer to the exact answer than that.
    exact_tol, staged_tol = (1e-10, 1e-9) if center == 1e4 else (1e-11, 1e-11)
    assert tb.scaled_error(fused[0], staged[0]) < 1e-10  # dx
    for name, f, s, e in zip(("dx", "dgamma", "dbeta"), fused, staged, exact):
        assert f.dtype == dtype and f.shape == s.shape
        assert tb.scaled_error(f, e.astype(np.float64)) < exact_tol, name
        assert tb.scaled_error(s, e.astype(np.float64)) < staged_tol, name
    assert tb.scaled_error(fused_out.data, staged_out.data) < staged_tol


def test_numba_switch_reports_its_state():
    kernels.use_numba(False)
    assert not kernels.numba_enabled()
    try:
        kernels.use_numba()
    except ImportError as error:
        assert "pip install numba" in str(error)
    else:
        assert kernels.numba_enabled()
    finally:
        kernels.use_numba(False)


def test_one_thread_and_two_agree():
    rng = np.random.default_rng(1)
    x, dout = rng.standard_normal((2048, 64)), rng.standard_normal((2048, 64))
    results = []
    for threads in (1, 2):
        kernels.set_num_threads(threads)
        try:
            results.append(run(tb.batchnorm_fused, x, np.ones(64), np.zeros(64), dout))
        finally:
            kernels.set_num_threads(2)
    (out1, grads1), (out2, grads2) = results
    assert tb.scaled_error(out1.data, out2.data) < 1e-14
    for a, b in zip(grads1, grads2):
        assert tb.scaled_error(a, b) < 1e-14
    with pytest.raises(ValueError, match="count: expected a positive int, got 0"):
        kernels.set_num_threads(0)


def test_layouts():
    x = np.zeros((256, 512))
    assert kernels.layout_for(x, (0,)) == kernels.Layout(256, 512, 1)
    assert kernels.layout_for(np.zeros((4, 8, 64, 64)), (0, 2, 3)) == kernels.Layout(4, 8, 4096)
    assert kernels.layout_for(x, (1,)) is None            # layer norm: the plain path
    assert kernels.layout_for(x[:, ::2], (0,)) is None    # not contiguous
    assert kernels.layout_for(np.zeros((8, 4)), (0,)) is None  # small


def test_module_running_statistics_on_the_fast_path(backend):
    rng = np.random.default_rng(0)
    x = 2 * rng.standard_normal((1024, 128)) + 5
    bn = tb.BatchNorm(128, momentum=0.5)
    bn(x)
    np.testing.assert_allclose(bn.running_mean, 0.5 * x.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(bn.running_var, 0.5 + 0.5 * x.var(axis=0), rtol=1e-10)


def test_pool_never_overwrites_a_held_result():
    x = np.random.default_rng(0).standard_normal((1024, 256))
    first = tb.batchnorm_fused(x, np.ones(256), np.zeros(256))
    kept = first.data.copy()
    second = tb.batchnorm_fused(x * 2 + 1, np.ones(256), np.zeros(256))
    assert second.data is not first.data
    np.testing.assert_array_equal(first.data, kept)
    buffer = id(second.data)  # the pool keeps it alive, so the id stays its own
    del second
    third = tb.batchnorm_fused(x, np.ones(256), np.zeros(256))
    assert id(third.data) == buffer  # the freed buffer was recycled
    view = third.data[:10]
    del third
    fourth = tb.batchnorm_fused(x, np.ones(256), np.zeros(256))
    assert id(fourth.data) != buffer  # a live view keeps its buffer out of the pool
    assert id(view.base) == buffer
    workspace.clear()
    assert workspace.pooled_bytes() == 0


def test_free_graph_frees_intermediates_and_keeps_leaf_gradients():
    rng = np.random.default_rng(0)
    x = tb.Node(rng.standard_normal((64, 8)))
    gamma, beta = tb.Node(np.ones(8)), tb.Node(np.zeros(8))
    dout = rng.standard_normal((64, 8))
    reference = tb.Node(x.data)
    tb.batchnorm_staged(reference, gamma.data, beta.data).backward(dout)
    out = tb.batchnorm_staged(x, gamma, beta)
    stages = tb.stages(out)
    out.backward(dout, free_graph=True)
    np.testing.assert_allclose(x.grad, reference.grad, rtol=1e-12)
    assert gamma.grad is not None and beta.grad is not None
    assert out.parents == () and stages["xhat"].grad is None and stages["xhat"].parents == ()
    before = x.grad.copy()
    with pytest.raises(ValueError, match="already freed by backward\\(free_graph=True\\)"):
        out.backward(dout)
    np.testing.assert_array_equal(x.grad, before)
