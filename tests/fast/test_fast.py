"""The equivalence suite: every fast variant equals the textbook function it stands in for.

Inputs are drawn by hypothesis at sizes above every fast threshold, in float32 and float64,
C and F order, transposed and sliced, with 1 to 4 threads and statistics far from zero.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tinygrad_bn as tb
from benchmarks.exactness import exact_normalization
from tinygrad_bn import fast
from tinygrad_bn.core.ops import Mul, PowConst
from tinygrad_bn.fast import kernels
from tinygrad_bn.fast import norm as fast_norm
from tinygrad_bn.fast.ops import LARGE_BYTES
from tinygrad_bn.norm import FusedNorm, norm_spec

VARIANTS = {variant.name: variant for variant in fast.VARIANTS}
DTYPES = [np.float64, np.float32]
LAYOUTS = ["C", "F", "transposed", "sliced"]
SETTINGS = settings(max_examples=12, deadline=None, derandomize=True)


def arrange(array: np.ndarray, layout: str) -> np.ndarray:
    """The same values in another memory layout (what a user's array may look like)."""
    if layout == "F":
        return np.asfortranarray(array)
    if layout == "transposed":
        return np.ascontiguousarray(array.T).T
    if layout == "sliced":
        wide = np.zeros(array.shape[:-1] + (2 * array.shape[-1],), array.dtype)
        wide[..., ::2] = array
        return wide[..., ::2]
    return np.ascontiguousarray(array)


def normwise(a, b) -> float:
    return tb.scaled_error(np.asarray(a, np.float64), np.asarray(b, np.float64))


def agree(fast_result, textbook_result, dtype) -> None:
    tol = 1e-12 if dtype == np.float64 else 2e-6
    for f, t in zip(fast_result, textbook_result, strict=True):
        assert f.shape == t.shape and f.dtype == t.dtype
        assert normwise(f, t) < tol


def test_every_variant_has_an_equivalence_test():
    assert set(VARIANTS) == {"Mul.backward", "PowConst.backward", "PowConst.forward",
                             "FusedNorm.statistics",
                             "FusedNorm.forward", "FusedNorm.forward_with_statistics",
                             "FusedNorm.backward",
                             "tinygrad_bn.core.node.vjp"}


# --- graphs of scalars ----------------------------------------------------------------
@SETTINGS
@given(dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**32 - 1),
       p=st.sampled_from([0.0, 2.0, 3.0, 0.5, -1.0]))
def test_every_scalar_rule_is_the_textbook_vjp(dtype, seed, p):
    from tinygrad_bn.fast.scalars import SCALAR_VJPS
    rng = np.random.default_rng(seed)
    a = tb.Node(dtype(rng.uniform(0.5, 2.0)))
    b = tb.Node(dtype(rng.uniform(0.5, 2.0)))
    upstream = dtype(rng.standard_normal())
    built = {"Add": a + b, "Sub": a - b, "Mul": a * b, "Div": a / b, "Neg": -a,
             "Identity": tb.identity(a), "Sqrt": a.sqrt(), "Exp": a.exp(), "Log": a.log(),
             "Tanh": a.tanh(), "PowConst": a ** p}
    assert set(built) == {op.__name__ for op in SCALAR_VJPS}
    for name, node in built.items():
        rule = SCALAR_VJPS[node.op_def]
        textbook = node.op_def.backward(upstream, *[q.data for q in node.parents], node.data,
                                        **node.params)
        fast_result = rule(upstream, node)
        for f, t in zip(fast_result, textbook, strict=True):
            assert type(f) is type(t) and (f == t or (np.isnan(f) and np.isnan(t))), name


@SETTINGS
@given(values=st.lists(st.floats(0.5, 2.0), min_size=3, max_size=3),
       plan=st.lists(st.tuples(st.integers(0, 5), st.integers(0, 2)), min_size=1, max_size=30))
def test_scalar_graphs_backpropagate_as_the_core_does(values, plan):
    def build():
        leaves = [tb.Node(v, name=f"l{i}") for i, v in enumerate(values)]
        y = leaves[0]
        for kind, which in plan:  # every step ends in tanh or a log of a positive: finite
            other = leaves[which]
            y = [(y + other).tanh(), (y * other).tanh(), (y / other).tanh(),
                 ((y * 0.5).exp() - other).tanh(), (y ** 2 - other).tanh(),
                 (y * y + 1.0).log()][kind]
        return leaves, y

    leaves, y = build()
    y.backward()
    with fast.disabled():
        core_leaves, core_y = build()
        core_y.backward()
    for fast_leaf, core_leaf in zip(leaves, core_leaves):
        assert fast_leaf.grad == core_leaf.grad or (fast_leaf.grad is None
                                                    and core_leaf.grad is None)


# --- op variants ----------------------------------------------------------------------
@st.composite
def large_product(draw, dtype=np.float64):
    rows = draw(st.integers(64, 200))
    cols = -(-LARGE_BYTES // (rows * np.dtype(dtype).itemsize)) + draw(st.integers(0, 64))
    small = draw(st.sampled_from([(cols,), (1, cols), (rows, 1), (1, 1)]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    big = arrange(rng.standard_normal((rows, cols)).astype(dtype), draw(st.sampled_from(LAYOUTS)))
    upstream = arrange(rng.standard_normal((rows, cols)).astype(dtype),
                       draw(st.sampled_from(LAYOUTS)))
    other = rng.standard_normal(small).astype(dtype)
    return (upstream, big, other) if draw(st.booleans()) else (upstream, other, big)


@SETTINGS
@given(case=large_product())
def test_mul_backward_variant(case):
    upstream, a, b = case
    variant = VARIANTS["Mul.backward"]
    assert variant.when(upstream, a, b, a * b)
    upstream32, a32, b32 = (v.astype(np.float32) for v in case)
    assert not variant.when(upstream32, a32, b32, a32 * b32)  # float32: the textbook's sums
    agree(variant.fast(upstream, a, b, a * b), variant.textbook(upstream, a, b, a * b), a.dtype)
    assert Mul.backward(upstream, a, b, a * b)[0].shape == a.shape


@SETTINGS
@given(dtype=st.sampled_from(DTYPES), layout=st.sampled_from(LAYOUTS),
       seed=st.integers(0, 2**32 - 1), extra=st.integers(0, 100))
def test_square_backward_variant(dtype, layout, seed, extra):
    rng = np.random.default_rng(seed)
    shape = (128, LARGE_BYTES // (128 * np.dtype(dtype).itemsize) + extra)
    base = arrange(rng.standard_normal(shape).astype(dtype), layout)
    upstream = rng.standard_normal(shape).astype(dtype)
    variant = VARIANTS["PowConst.backward"]
    assert variant.when(upstream, base, base**2, p=2.0)
    agree(variant.fast(upstream, base, base**2, p=2.0),
          variant.textbook(upstream, base, base**2, p=2.0), dtype)
    assert PowConst.backward(upstream, base, base**2, p=2.0)[0].dtype == dtype


# --- the fused normalization ----------------------------------------------------------


@st.composite
def norm_case(draw, large: bool, kinds: tuple[str, ...] | None = None):
    if kinds is None:
        kinds = ("batch", "spatial") if large else ("batch", "spatial", "layer", "group")
    kind = draw(st.sampled_from(kinds))
    dtype = draw(st.sampled_from(DTYPES))
    if kind in ("batch", "layer") and draw(st.booleans()):
        features = draw(st.integers(2, 300))
        rows = (-(-kernels.MIN_ELEMENTS // features) if large else 2) + draw(st.integers(0, 300))
        shape = (rows, features)
    else:
        channels = draw(st.sampled_from([2, 4, 6]))
        hw = draw(st.integers(3, 12))
        batch = (-(-kernels.MIN_ELEMENTS // (channels * hw * hw)) if large else 2) \
            + draw(st.integers(0, 3))
        shape = (batch, channels, hw, hw)
        kind = "spatial" if kind == "batch" else kind
    if kind == "layer":
        shape = shape[:2] if len(shape) == 2 else shape
    center = draw(st.sampled_from([0.0, 3.0, 1e4]))
    spread = 1.0
    if center == 1e4:
        spread = 1e-2 if dtype == np.float64 else 10.0  # float32 cannot hold 1e4 +- 1e-2
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = arrange((center + spread * rng.standard_normal(shape)).astype(dtype),
                draw(st.sampled_from(LAYOUTS)))
    spec = norm_spec(kind, shape, groups=2 if kind == "group" else None)
    gamma = rng.standard_normal(spec.param_shape).astype(dtype)
    beta = rng.standard_normal(spec.param_shape).astype(dtype)
    dout = rng.standard_normal(shape).astype(dtype)
    return spec, x, gamma, beta, dout, center


def check_norm_variants(case, threads=2):
    spec, x, gamma, beta, dout, center = case
    dtype = x.dtype
    stats, forward, backward = (VARIANTS[f"FusedNorm.{name}"]
                                for name in ("statistics", "forward", "backward"))
    kernels.set_num_threads(threads)
    try:
        mean, var = stats.fast(x, spec)
        out = forward.fast(x, gamma, beta, spec=spec, mean=mean, var=var)
        grads = backward.fast(dout, x, gamma, beta, out, spec=spec, mean=mean, var=var)
        together = VARIANTS["FusedNorm.forward_with_statistics"].fast(x, gamma, beta, spec=spec)
    finally:
        kernels.set_num_threads(2)
    mean_t, var_t = stats.textbook(x, spec)
    out_t = forward.textbook(x, gamma, beta, spec=spec, mean=mean_t, var=var_t)
    grads_t = backward.textbook(dout, x, gamma, beta, out_t, spec=spec, mean=mean_t, var=var_t)
    assert mean.shape == mean_t.shape and var.shape == var_t.shape
    # The one-call forward (training mode) gives what the statistics and forward give apart.
    for name, f, t in zip(("out", "mean", "var"), together, (out, mean, var), strict=True):
        assert f.shape == t.shape and f.dtype == t.dtype, name
        assert normwise(f, t) <= (1e-14 if dtype == np.float64 else 1e-6), name
    assert out.dtype == dtype and all(g.dtype == dtype for g in grads)
    exact = exact_normalization(x, gamma, beta, dout, spec)
    for name, f, t, e in zip(("out", "dx", "dgamma", "dbeta"), (out, *grads), (out_t, *grads_t),
                             exact, strict=True):
        assert f.shape == t.shape, name
        e = np.asarray(e, np.float64)
        # Both are the same closed form within rounding, and the fast path is no less exact
        # (far from zero it is more exact: the textbook's float64 mean rounds there). Every
        # fast pass works float32 in float64 and rounds once, so float32 results are within
        # the final rounding (half an eps) of the textbook's error.
        floor = 1e-11 if dtype == np.float64 else float(np.finfo(np.float32).eps)
        assert normwise(f, e) <= 2 * normwise(t, e) + floor, name
        if dtype == np.float64 and center != 1e4:
            assert normwise(f, t) < 1e-11, name


@settings(max_examples=10, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # the backend is fixed
@given(case=norm_case(large=True), threads=st.integers(1, 4))
def test_blocked_norm_equals_the_closed_form(case, threads, backend):
    spec, x = case[0], case[1]
    # This size takes the blocked passes when x is C-contiguous; other layouts take lean.py.
    assert (kernels.layout_for(x, spec.reduce_axes) is not None) == x.flags.c_contiguous
    check_norm_variants(case, threads)


@settings(max_examples=10, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # the backend is fixed
@given(case=norm_case(large=True, kinds=("layer", "group")), threads=st.integers(1, 4))
def test_row_blocked_norm_equals_the_closed_form(case, threads, backend):
    spec, x = case[0], case[1]
    # This size takes the row passes (blocks of whole samples) when x is C-contiguous.
    rows = kernels.row_layout_for(x, spec, kernels.MIN_ELEMENTS)
    assert (rows is not None) == x.flags.c_contiguous
    if backend == "numpy" and rows is not None:
        assert fast_norm._route(x, spec)[0] == "blocked rows"
    check_norm_variants(case, threads)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(case=norm_case(large=False))
def test_lean_norm_equals_the_closed_form(case):
    check_norm_variants(case)


@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # the backend is fixed
@given(case=norm_case(large=False))
def test_small_norm_equals_the_closed_form_on_each_backend(case, backend):
    spec, x = case[0], case[1]
    # With numba a small C-contiguous x takes one serial compiled call per seam
    # (numba_small.py); other layouts, and every small x without numba, take lean.py.
    small = backend == "numba" and x.flags.c_contiguous
    assert fast_norm._route(x, spec)[0] == ("small" if small else "lean")
    check_norm_variants(case)


def test_small_routes_are_cached_by_shape_strides_and_dtype(backend):
    rng = np.random.default_rng(5)
    for shape, kind in (((32, 8), "batch"), ((8, 32), "batch"), ((32, 8), "layer"),
                        ((4, 2, 3, 3), "spatial"), ((4, 4, 3, 3), "group")):
        for dtype in DTYPES:
            x = (3 + rng.standard_normal(shape)).astype(dtype)
            for layout in ("C", "F"):
                check_norm_variants(norm_case_of(kind, arrange(x, layout), rng))


def test_one_value_per_statistic_gives_exactly_zero_dx(backend):
    # x - mean is exactly 0, so dx is exactly 0 (a fused multiply-add would leave the product's
    # rounding error of gamma * dy there).
    rng = np.random.default_rng(6)
    for kind, shape, groups in (("layer", (3, 1), None), ("group", (2, 4, 1, 1), 4)):
        x = tb.Node(rng.standard_normal(shape))
        gamma, beta = 1 + rng.random(shape[1]), rng.standard_normal(shape[1])
        out = tb.norm_fused(kind, x, gamma, beta, groups=groups)
        out.backward(rng.standard_normal(shape))
        assert np.array_equal(out.data, np.broadcast_to(beta.reshape(1, -1, *shape[2:]), shape))
        assert not np.any(x.grad), (kind, x.grad)


def norm_case_of(kind, x, rng):
    spec = norm_spec(kind, x.shape, groups=2 if kind == "group" else None)
    gamma = rng.standard_normal(spec.param_shape).astype(x.dtype)
    beta = rng.standard_normal(spec.param_shape).astype(x.dtype)
    return spec, x, gamma, beta, rng.standard_normal(x.shape).astype(x.dtype), 3.0


def test_whole_engine_with_and_without_the_fast_layer(backend):
    rng = np.random.default_rng(3)
    for shape in [(2048, 64), (16, 8), (8, 4, 16, 16)]:
        x, dout = rng.standard_normal(shape), rng.standard_normal(shape)
        params = rng.standard_normal(shape[1]), rng.standard_normal(shape[1])
        results = []
        for enabled in (True, False):
            nodes = tb.Node(x), tb.Node(params[0]), tb.Node(params[1])
            if enabled:
                out = tb.batchnorm_fused(*nodes)
                out.backward(dout)
            else:
                with fast.disabled():
                    out = tb.batchnorm_fused(*nodes)
                    out.backward(dout)
            results.append([out.data] + [n.grad for n in nodes])
        for a, b in zip(*results, strict=True):
            assert normwise(a, b) < 1e-12


# --- threads, processes, the allocator ------------------------------------------------
def test_any_thread_count_works_on_any_shape():
    rng = np.random.default_rng(0)
    x = (1e4 + rng.standard_normal((16384, 16))).astype(np.float64)
    spec = norm_spec("batch", x.shape)
    reference = VARIANTS["FusedNorm.statistics"].textbook(x, spec)
    for threads in (1, 2, 3, 4, 7, 64):
        kernels.set_num_threads(threads)
        try:
            mean, var = FusedNorm.statistics(x, spec)
        finally:
            kernels.set_num_threads(2)
        assert normwise(mean, reference[0]) < 1e-14 and normwise(var, reference[1]) < 1e-9
    with pytest.raises(ValueError, match="count: expected a positive int, got 0"):
        kernels.set_num_threads(0)


def run_python(code: str, timeout: float = 240, env: dict | None = None):
    import os
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


FORK_SCRIPT = """
import multiprocessing, numpy as np, tinygrad_bn as tb
{setup}
x = np.random.default_rng(0).standard_normal((4096, 64))
def step(seed):
    node = tb.Node(x * (1 + seed))
    out = tb.batchnorm_fused(node, np.ones(64), np.zeros(64))
    out.backward(x)
    layer = tb.Node(x * (1 + seed))
    layer_out = tb.layernorm_fused(layer, np.ones(64), np.zeros(64))
    layer_out.backward(x)
    return (float(out.data.std()), float(np.abs(node.grad).sum()),
            float(np.abs(layer.grad).sum()))
expected = [step(seed) for seed in range(4)]  # the parent uses the threads (and numba) first
with multiprocessing.get_context("fork").Pool(2) as pool:
    print("same results:", np.allclose(pool.map(step, range(4)), expected, rtol=1e-12))
"""


@pytest.mark.parametrize("setup", ["tb.fast.use_numba(False)", "", "tb.fast.use_numba()"])
def test_fork_after_the_threaded_kernel(setup):
    if setup != "tb.fast.use_numba(False)":  # the default: compiled where numba is installed
        pytest.importorskip("numba")
    result = run_python(FORK_SCRIPT.format(setup=setup), timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "same results: True" in result.stdout


@pytest.mark.parametrize("layer", ["numpy", "default", "workqueue"])
def test_kernels_from_several_python_threads(layer):
    if layer != "numpy":
        pytest.importorskip("numba")
    code = """
import threading, numpy as np, tinygrad_bn as tb
tb.fast.use_numba(%s)
x = np.random.default_rng(0).standard_normal((4096, 64))
expected = tb.batchnorm_fused(x, np.ones(64), np.zeros(64)).data
failures = []
def work():
    for _ in range(20):
        out = tb.batchnorm_fused(tb.Node(x), np.ones(64), np.zeros(64))
        out.backward(x)
        if not np.allclose(out.data, expected):
            failures.append(1)
threads = [threading.Thread(target=work) for _ in range(4)]
[t.start() for t in threads]; [t.join() for t in threads]
print("failures", len(failures))
"""
    code = code % (layer != "numpy")
    result = run_python(code, env={"NUMBA_THREADING_LAYER": layer} if layer == "workqueue" else {})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "failures 0" in result.stdout


def test_numba_requested_but_missing_is_a_warning():
    code = """
import sys, warnings
import numpy as np
sys.modules["numba"] = None  # as if numba were not installed
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import tinygrad_bn as tb
    print("at import:", len(caught))
    out = tb.batchnorm_fused(np.ones((4096, 2)), np.ones(2), np.zeros(2))  # the first use
print([str(w.message) for w in caught])
print(tb.fast.numba_enabled())
"""
    result = run_python(code, env={"TINYGRAD_BN_NUMBA": "1"})
    assert result.returncode == 0, result.stderr
    assert "at import: 0" in result.stdout
    assert "TINYGRAD_BN_NUMBA=1: use_numba: numba is not installed" in result.stdout
    assert result.stdout.strip().endswith("False")
    asked = run_python("import sys; sys.modules['numba'] = None\nimport tinygrad_bn as tb\n"
                       "tb.fast.use_numba()")
    assert "ImportError: use_numba: numba is not installed" in asked.stderr
    assert "pip install numba" in asked.stderr


def test_importing_the_library_imports_no_numba_and_registers_nothing():
    code = """
import os, sys
registered = []
original = os.register_at_fork
def register(**handlers):  # record the library's own handlers (other modules have theirs)
    registered.extend(h for h in handlers.values()
                      if (getattr(h, "__module__", None) or "").startswith("tinygrad_bn"))
    original(**handlers)
os.register_at_fork = register
import numpy as np
import tinygrad_bn as tb
print("numba at import:", "numba" in sys.modules, len(registered))
x = np.random.default_rng(0).standard_normal((4096, 4))
tb.batchnorm_fused(tb.Node(x), np.ones(4), np.zeros(4)).backward(x)
print("numba after use:", "numba" in sys.modules, len(registered) >= 1)
"""
    result = run_python(code, env={"TINYGRAD_BN_NUMBA": ""})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "numba at import: False 0" in result.stdout
    try:
        import numba  # noqa: F401
    except ImportError:
        return
    assert "numba after use: True True" in result.stdout  # installed: used by default


@pytest.mark.parametrize("setting, compiled", [("0", False), ("", True)])
def test_compiled_passes_follow_the_environment_at_first_use(setting, compiled):
    pytest.importorskip("numba")
    code = f"""
import os, numpy as np, tinygrad_bn as tb
os.environ["TINYGRAD_BN_NUMBA"] = {setting!r}  # read at the first use, not at import
print("compiled:", tb.fast.numba_enabled())
"""
    result = run_python(code)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"compiled: {compiled}" in result.stdout


def test_varying_batch_sizes_keep_memory_bounded():
    code = """
import numpy as np, tinygrad_bn as tb
def rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
def step(rows):
    x = np.random.default_rng(rows).standard_normal((rows, 512))
    tb.batchnorm_staged(tb.Node(x), np.ones(512), np.zeros(512)).backward(x)
step(6600)
after_largest = rss_mb()
for rows in range(1000, 6600, 37):  # 152 batch sizes, each smaller than the first
    step(rows)
print(after_largest, rss_mb())
"""
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    after_largest, after_all = map(float, result.stdout.split())
    assert after_all < 1.25 * after_largest + 50, (after_largest, after_all)


def test_allocator_settings():
    import platform
    glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert fast.alloc.configure() is glibc  # glibc takes the setting; other C libraries: False
    with pytest.raises(ValueError, match="keep_bytes: expected an int >= 0, got -1"):
        fast.alloc.configure(-1)
    fast.alloc.configure(0)
    fast.alloc.configure()


def test_no_reuse_decision_reads_reference_counts():
    import pathlib
    root = pathlib.Path(tb.__file__).parent
    assert not [p for p in root.rglob("*.py") if "getrefcount" in p.read_text()]


# --- exactness that does not depend on the path ----------------------------------------
@pytest.mark.parametrize("center", [3.0, 100.0])
def test_float32_is_as_exact_below_the_kernel_threshold_as_above(center):
    errors = {}
    for rows in (4095, 4096):  # 4095 x 16 runs the lean closed form, 4096 x 16 the kernel
        rng = np.random.default_rng(1)
        x = (center + rng.standard_normal((rows, 16))).astype(np.float32)
        gamma = rng.standard_normal(16).astype(np.float32)
        dout = rng.standard_normal((rows, 16)).astype(np.float32)
        spec = norm_spec("batch", x.shape)
        assert (kernels.layout_for(x, (0,)) is None) == (rows == 4095)
        nodes = tb.Node(x), tb.Node(gamma), tb.Node(np.zeros(16, np.float32))
        out = tb.batchnorm_fused(*nodes)
        out.backward(dout)
        exact = exact_normalization(x, gamma, np.zeros(16, np.float32), dout, spec)
        errors[rows] = max(normwise(a, np.asarray(e, np.float64)) for a, e in
                           zip((out.data, nodes[0].grad, nodes[1].grad, nodes[2].grad), exact))
    assert errors[4095] <= 3 * errors[4096] + 1e-7, errors
    assert errors[4095] < 1e-5


@pytest.mark.parametrize("rows", [16, 4096])
@pytest.mark.parametrize("fused", [True, False])
def test_output_dtype_is_the_input_dtype(rows, fused):
    x = np.random.default_rng(0).standard_normal((rows, 16)).astype(np.float32)
    for module in (tb.BatchNorm(16, fused=fused), tb.LayerNorm(16, fused=fused)):
        train_out = module(x)
        train_out.backward(np.ones_like(x))
        assert train_out.dtype == np.float32 and module.gamma.grad.dtype == np.float32
        module.eval()
        assert module(x).dtype == np.float32
    assert tb.batchnorm_fused(x, np.ones(16), np.zeros(16)).dtype == np.float32
    given = tb.BatchNorm(16, fused=fused, dtype=np.float64)  # a dtype given is kept ...
    given_out = given(x)
    assert given.gamma.dtype == np.float64 and given_out.dtype == np.float32  # ... output: x's


def test_compare_in_float32_catches_a_real_miss(monkeypatch):
    rng = np.random.default_rng(5)
    x = (3 + rng.standard_normal((200, 8))).astype(np.float32)
    gamma = rng.standard_normal(8).astype(np.float32)
    beta = np.zeros(8, np.float32)
    assert tb.compare_batchnorm(x, gamma, beta, seed=3).ok
    textbook = FusedNorm.backward

    def off_by_1e4(*args, **kwargs):
        dx, dgamma, dbeta = textbook(*args, **kwargs)
        return dx, dgamma * np.float32(1 + 1e-4), dbeta

    monkeypatch.setattr(FusedNorm, "backward", staticmethod(off_by_1e4))
    report = tb.compare_batchnorm(x, gamma, beta, seed=3)
    assert not report.ok and "dgamma fused~numeric" in str(report)
