"""check_layers on students written here after real ones: habits that must pass, the real
bug patterns (each must be reported at the line planted), isolation of hostile code."""

import pathlib
import subprocess
import sys

import numpy as np
import pytest

import tinygrad_bn as tb

STUDENTS = pathlib.Path(__file__).resolve().parents[1] / "students"
HABITS = (STUDENTS / "habits.py").read_text()
COMPLETE = (STUDENTS / "complete.py").read_text()
EXE = pathlib.Path(sys.executable).with_name("tinygrad-bn")
MAP = {"batchnorm_forward": "batchnormForward"}


def write(tmp_path, text):
    folder = tmp_path / "cs231n"
    folder.mkdir(exist_ok=True)
    path = folder / "layers.py"
    path.write_text(text)
    return path


def reference_layernorm_dx(x, gamma, dout, eps=1e-5):
    """Ground truth without the project: central differences of sum(dout * layernorm(x))."""
    def f(z):
        mu = z.mean(axis=1, keepdims=True)
        return np.sum(dout * gamma * (z - mu) / np.sqrt(z.var(axis=1, keepdims=True) + eps))
    grad = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        step = np.zeros_like(x)
        step[index] = 1e-6
        grad[index] = (f(x + step) - f(x - step)) / 2e-6
    return grad


def test_habits_pass_with_a_warning_and_a_note(tmp_path):
    report = tb.check_layers(write(tmp_path, HABITS), timeout=10, functions=MAP)
    assert report.ok, str(report)
    assert report.notes == ["cs231n.im2col not found (a course module; the file was given "
                            "without it): loaded with it stubbed (normalization does not need it)"]
    assert "float64 output" in report.results["batchnorm_forward"].warnings[0]
    assert report.results["layernorm_forward"].warnings == []


def test_an_unmapped_camel_case_name_is_suggested(tmp_path):
    report = tb.check_layers(write(tmp_path, HABITS), timeout=10)
    assert report.missing == {"batchnorm_forward": "batchnormForward"}
    assert "--function batchnorm_forward=batchnormForward" in str(report)


# name: (old, new, function, the text of the planted line, words of the diagnosis)
REAL_BUGS = {
    "eps outside the square root": (
        "x_norm = (x - mean) / np.sqrt(variance + eps)", "x_norm = (x - mean) / (np.sqrt(variance) + eps)",
        "batchnorm_forward", "x_norm = (x - mean) / (np.sqrt", "eps added outside the square root"),
    "variance over all axes": (
        "variance = np.var(x, axis=0, keepdims=True)", "variance = np.var(x)",
        "batchnorm_forward", "variance = np.var(x)\n", "statistics over all of x"),
    "momentum reversed": (
        "running_mean = momentum * running_mean + (1 - momentum) * mean",
        "running_mean = (1 - momentum) * running_mean + momentum * mean",
        "batchnorm_forward", "running_mean = (1 - momentum)", "the wrong way round"),
    "gamma outside the per-sample sum": (
        "dx = (D * dx_hat - dx_hat.sum(axis=0)",
        "dx = (D * dx_hat - gamma[:, None] * dout.T.sum(axis=0)",
        "layernorm_backward", "dx = (D * dx_hat - gamma", "gamma taken out of a sum"),
    "the Jacobian's diagonal only": (
        "dx = (N * dx_norm - dx_norm.sum(axis=0) - x_norm * (dx_norm * x_norm).sum(axis=0)) / (\n"
        "        N * np.sqrt(variance + eps))",
        "dx = dx_norm / np.sqrt(variance + eps) * ((1 - 1 / N) - x_norm ** 2 / N)",
        "batchnorm_backward_alt", "dx = dx_norm / np.sqrt", "only the diagonal of the Jacobian"),
    "closed form with a missing term": (
        "dx = (N * dx_norm - dx_norm.sum(axis=0) - x_norm * (dx_norm * x_norm).sum(axis=0)) / (",
        "dx = (N * dx_norm - dx_norm.sum(axis=0)) / (",
        "batchnorm_backward_alt", "dx = (N * dx_norm - dx_norm.sum(axis=0)) / (",
        "the branch through the variance"),
    "unbiased variance in layer norm, forward and backward": (
        "var = (xc ** 2).mean(axis=0)", "var = (xc ** 2).sum(axis=0) / (xc.shape[0] - 1)",
        "layernorm_backward", "var = (xc ** 2).sum", "which makes the cache"),
}


@pytest.mark.parametrize("name", sorted(REAL_BUGS))
def test_real_bug_patterns_are_placed_on_their_line(name, tmp_path):
    old, new, function, marker, words = REAL_BUGS[name]
    assert old in HABITS
    text = HABITS.replace(old, new, 1)
    report = tb.check_layers(write(tmp_path, text), timeout=10, functions=MAP, only=[function])
    result = report.results[function]
    assert result.status == "fail", str(report)
    assert result.line == text[:text.index(marker)].count("\n") + 1, str(report)
    assert words in result.diagnosis, str(report)
    record = result.departure
    assert record is not None and not record.matches and record.line == result.line
    assert any(s.matches for s in result.stages)
    assert result.to_dict()["stages"][0].keys() >= {"name", "line", "variable", "value",
                                                    "expected", "matches", "departure"}


def test_the_ground_truth_agrees_that_the_gamma_bug_is_wrong_and_the_habit_right():
    rng = np.random.default_rng(0)
    x, gamma, dout = rng.standard_normal((4, 5)), 1 + rng.standard_normal(5), rng.standard_normal((4, 5))
    namespace: dict = {}
    exec(HABITS.replace("from cs231n.im2col import *", ""), namespace)
    _, cache = namespace["layernorm_forward"](x, gamma, np.zeros(5), {})
    dx = namespace["layernorm_backward"](dout, cache)[0]
    assert np.allclose(dx, reference_layernorm_dx(x, gamma, dout), atol=1e-6)
    old, new = REAL_BUGS["gamma outside the per-sample sum"][:2]
    exec(HABITS.replace("from cs231n.im2col import *", "").replace(old, new), namespace)
    dx = namespace["layernorm_backward"](dout, cache)[0]
    assert not np.allclose(dx, reference_layernorm_dx(x, gamma, dout), atol=1e-3)


def test_spatial_reshape_without_transpose_is_placed_on_its_line(tmp_path):
    text = COMPLETE + '''

def spatial_batchnorm_forward(x, gamma, beta, bn_param):
    N, C, H, W = x.shape
    flat = x.reshape(N * H * W, C)
    out, cache = batchnorm_forward(flat, gamma, beta, bn_param)
    return out.reshape(N, C, H, W), cache
'''
    report = tb.check_layers(write(tmp_path, text), timeout=10, only=["spatial_batchnorm_forward"])
    result = report.results["spatial_batchnorm_forward"]
    assert result.status == "fail"
    assert "without moving C last" in result.diagnosis, str(report)
    # the line of the judged function that shapes x for the helper, not the helper's own
    assert result.function == "spatial_batchnorm_forward" and result.variable == "flat"
    assert result.line == text.splitlines().index("    flat = x.reshape(N * H * W, C)") + 1


STUB_FORWARD = '''
def layernorm_forward(x, gamma, beta, ln_param):
    out, cache = None, None
    pass
    return out, cache
'''


def test_stubs_are_not_implemented_and_so_is_their_backward(tmp_path):
    text = COMPLETE.replace("def layernorm_forward(", "def unused_forward(") + STUB_FORWARD
    report = tb.check_layers(write(tmp_path, text), timeout=10,
                             only=["layernorm_forward", "layernorm_backward"])
    assert {r.status for r in report.results.values()} == {"not implemented"}, str(report)


def test_test_mode_stub_is_a_fail_that_says_so(tmp_path):
    text = HABITS.replace('''        out[:] = gamma * (x - running_mean.reshape(1, -1)) / np.sqrt(
            running_var.reshape(1, -1) + eps) + beta''', "        out = None")
    report = tb.check_layers(write(tmp_path, text), timeout=10, functions=MAP,
                             only=["batchnorm_forward"])
    result = report.results["batchnorm_forward"]
    assert result.status == "fail"
    assert result.diagnosis.startswith("train right; running statistics right; test mode not "
                                       "implemented yet"), str(report)


def test_dgamma_in_another_shape_fails_and_dx_is_still_judged(tmp_path):
    text = HABITS.replace("    dgamma = (dout * x_norm).sum(axis=0)\n",
                          "    dgamma = (dout * x_norm).sum(axis=0, keepdims=True)\n").replace(
        "dx_norm.sum(axis=0) - x_norm", "dx_norm.sum(axis=0) * 0 - x_norm")
    report = tb.check_layers(write(tmp_path, text), timeout=10, functions=MAP,
                             only=["batchnorm_backward_alt"])
    result = report.results["batchnorm_backward_alt"]
    assert result.parts == {"dx": "wrong", "dgamma": "wrong shape", "dbeta": "right"}
    assert "right values in shape (1, 5)" in result.diagnosis and result.line is not None


HOSTILE = {
    "builtins.len replaced": ("import builtins\nbuiltins.len = lambda o: 7\n", "pass"),
    "sys.exit": ("import sys\nsys.exit(3)\n", "error", "calls sys.exit(3)"),
    "keyboard interrupt": ("raise KeyboardInterrupt\n", "error", "raised KeyboardInterrupt"),
    "a segfault": ("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n", "error",
                   "killed by SIGSEGV while running layernorm_forward"),
    "a sleep": ("import time\ntime.sleep(30)\n", "error",
                "timed out after 1 s while running layernorm_forward"),
    "a huge allocation": ("import numpy\nnumpy.ones(2**34)\n", "error", "MemoryError"),
    # the orderly close() and join(), so that no worker is killed mid-task by terminate()
    "a pool": ("import multiprocessing\npool = multiprocessing.Pool(2)\n"
               "assert pool.map(abs, [-1, -2]) == [1, 2]\npool.close()\npool.join()\n", "pass"),
    "a flood of prints": ("for _ in range(200000):\n    print('x' * 50)\n", "pass"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_code_is_reported_as_the_students(name, tmp_path):
    code, status, *words = HOSTILE[name]
    body = "".join("    " + line + "\n" for line in code.splitlines())
    text = COMPLETE.replace("def layernorm_forward(x, gamma, beta, ln_param):\n",
                            "def layernorm_forward(x, gamma, beta, ln_param):\n" + body)
    # each judged call forks two workers, and 10 MB of prints take seconds to drain: on a
    # machine shared with other work the pool and the flood get a wider limit (what is
    # asserted is the same: they pass)
    timeout = {"a sleep": 1, "a pool": 90, "a flood of prints": 60}.get(name, 20)
    report = tb.check_layers(write(tmp_path, text), timeout=timeout, memory=2**30,
                             only=["layernorm_forward", "layernorm_backward"])
    result = report.results["layernorm_forward"]
    assert result.status == status, str(report)
    for word in words:
        assert word in result.diagnosis, str(report)
    assert len(result.output) < 3000
    if name == "a flood of prints":
        assert "bytes in all" in result.output


def test_the_reply_cannot_run_code_in_the_caller():
    from tinygrad_bn.grading.sandbox import run_isolated
    outcome = run_isolated(lambda: {"a": np.arange(3.0), "b": [1, "two"], "c": object()}, 10)
    assert outcome.failure is None
    assert np.array_equal(outcome.value["a"], [0, 1, 2])
    assert outcome.value["c"] == {"__unsendable__": "object"}


def test_cli_usage_errors_save_case_and_explain_load(tmp_path):
    def run(*args):
        return subprocess.run([str(EXE), *map(str, args)], capture_output=True, text=True,
                              timeout=120)
    for bad in (["--timeout", "inf"], ["--timeout", "3e6"], ["--only", ","], ["--memory", "0"],
                ["--function", "batchnorm_forward"]):
        result = run("check", STUDENTS / "complete.py", *bad)
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result
    case = tmp_path / "case.npz"
    result = run("check", STUDENTS / "two_slips.py", "--only", "batchnorm_backward",
                 "--save-case", case, "--timeout", "20")
    assert result.returncode == 1 and "Line 66, `dx_k1`" in result.stdout
    shown = run("explain", "--values", "--load", case)
    assert shown.returncode == 0
    text = shown.stdout
    assert text.index("\nx = ") < text.index("\ngamma = ") < text.index("\ndout = ") \
        < text.index("\nmu = ")
    saved = np.load(case)
    assert np.array_equal(saved["x"], tb.explain(load=case).inputs["x"])
    assert "correct_dxmu2" in saved.files and "student_dx" in saved.files


LAYOUTS = (STUDENTS / "layouts.py").read_text()


def reference_spatial(x, gamma, beta, running_mean, running_var, momentum, eps=1e-5):
    """Ground truth without the project: train out, running statistics after the step,
    test out with the statistics given."""
    mean, var = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))
    shape = (1, -1, 1, 1)
    train = gamma.reshape(shape) * (x - mean.reshape(shape)) / np.sqrt(
        var.reshape(shape) + eps) + beta.reshape(shape)
    test = gamma.reshape(shape) * (x - running_mean.reshape(shape)) / np.sqrt(
        running_var.reshape(shape) + eps) + beta.reshape(shape)
    return (train, momentum * running_mean + (1 - momentum) * mean,
            momentum * running_var + (1 - momentum) * var, test)


def test_the_layouts_student_is_right_by_the_ground_truth():
    rng = np.random.default_rng(3)
    x, gamma, beta = rng.standard_normal((3, 2, 4, 5)), 1 + rng.random(2), rng.standard_normal(2)
    namespace: dict = {}
    exec(LAYOUTS, namespace)
    param = {"mode": "train", "momentum": 0.6}
    out, _ = namespace["spatial_batchnorm_forward"](x, gamma, beta, param)
    train, mean, var, _ = reference_spatial(x, gamma, beta, np.zeros(2), np.zeros(2), 0.6)
    assert np.allclose(out, train) and param["running_mean"].shape == (1, 2, 1, 1)
    assert np.allclose(param["running_mean"].ravel(), mean)
    assert np.allclose(param["running_var"].ravel(), var)
    param["mode"] = "test"
    out, _ = namespace["spatial_batchnorm_forward"](x, gamma, beta, param)
    assert np.allclose(out, reference_spatial(x, gamma, beta, mean, var, 0.6)[3])
    x2, g2, dout = rng.standard_normal((4, 5)), 1 + rng.random(5), rng.standard_normal((4, 5))
    _, cache = namespace["layernorm_forward"](x2, g2, np.zeros(5), {})
    dx = namespace["layernorm_backward"](dout, cache)[0]
    assert np.allclose(dx, reference_layernorm_dx(x2, g2, dout), atol=1e-6)


def test_running_statistics_kept_in_the_students_own_layout_pass(tmp_path):
    report = tb.check_layers(write(tmp_path, LAYOUTS), timeout=10)
    assert report.ok, str(report)


# name: (old, new, function, the text of the planted line, words of the diagnosis)
LAYOUT_BUGS = {
    "test mode with eps outside the square root": (
        "out = g * (x - running_mean) / np.sqrt(running_var + eps) + b",
        "out = g * (x - running_mean) / (np.sqrt(running_var) + eps) + b",
        "spatial_batchnorm_forward", "out = g * (x - running_mean) / (np.sqrt",
        "eps added outside the square root"),
    "test mode without gamma and beta": (
        "out = g * (x - running_mean) / np.sqrt(running_var + eps) + b",
        "out = (x - running_mean) / np.sqrt(running_var + eps)",
        "spatial_batchnorm_forward", "out = (x - running_mean) / np.sqrt",
        "gamma and beta left out"),
    "a wrong power in a transposed dx turned back later": (
        "centre / spread ** 3 / D", "centre / spread ** 2 / D",
        "layernorm_backward", "dx_T = (", "dx wrong"),
    "x where the centred x belongs": (
        "(g_t * centre).sum(axis=0) * centre", "(g_t * cols).sum(axis=0) * cols",
        "layernorm_backward", "dx_T = (", "x where the centred x - mu belongs"),
}


@pytest.mark.parametrize("name", sorted(LAYOUT_BUGS))
def test_slips_in_chosen_layouts_are_placed_on_their_line(name, tmp_path):
    old, new, function, marker, words = LAYOUT_BUGS[name]
    assert old in LAYOUTS
    text = LAYOUTS.replace(old, new, 1)
    if "cols" in new:  # the raw input travels in the cache
        text = text.replace("return out, (centre, spread, gamma, x_hat)",
                            "return out, (centre, spread, gamma, x_hat, cols)").replace(
            "centre, spread, gamma, x_hat = cache", "centre, spread, gamma, x_hat, cols = cache")
    report = tb.check_layers(write(tmp_path, text), timeout=10, only=[function])
    result = report.results[function]
    assert result.status == "fail", str(report)
    assert result.line == text[:text.index(marker)].count("\n") + 1, str(report)
    assert words in result.diagnosis, str(report)


@pytest.mark.parametrize("name", sorted(LAYOUT_BUGS))
def test_the_ground_truth_agrees_each_layout_slip_is_wrong(name):
    old, new, function, _, _ = LAYOUT_BUGS[name]
    text = LAYOUTS.replace(old, new, 1)
    text = text.replace("return out, (centre, spread, gamma, x_hat)",
                        "return out, (centre, spread, gamma, x_hat, cols)").replace(
        "centre, spread, gamma, x_hat = cache", "centre, spread, gamma, x_hat, cols = cache")
    namespace: dict = {}
    exec(text, namespace)
    rng = np.random.default_rng(5)
    if function == "spatial_batchnorm_forward":
        x, gamma, beta = rng.standard_normal((3, 2, 4, 5)), 1 + rng.random(2), rng.standard_normal(2)
        mean, var = rng.standard_normal(2), rng.uniform(1e-4, 2e-4, 2)  # eps matters here
        param = {"mode": "test", "running_mean": mean.reshape(1, 2, 1, 1),
                 "running_var": var.reshape(1, 2, 1, 1)}
        out, _ = namespace[function](x, gamma, beta, param)
        assert not np.allclose(out, reference_spatial(x, gamma, beta, mean, var, 0.9)[3])
    else:
        x, gamma, dout = 3 + rng.standard_normal((4, 5)), 1 + rng.random(5), rng.standard_normal((4, 5))
        _, cache = namespace["layernorm_forward"](x, gamma, np.zeros(5), {})
        dx = namespace[function](dout, cache)[0]
        assert not np.allclose(dx, reference_layernorm_dx(x, gamma, dout), atol=1e-3)


def test_gamma_indexed_as_if_it_were_one_dimensional_is_placed_on_its_line(tmp_path):
    planted = "    out = gamma[np.newaxis, :, np.newaxis, np.newaxis] * xhat + beta\n"
    text = COMPLETE.replace("    out = gamma * xhat + beta\n    return out, (xhat, gamma, ivar, G)",
                            planted + "    return out, (xhat, gamma, ivar, G)")
    assert planted in text
    # ground truth: with gamma as the assignment passes it, (1, C, 1, 1), out gains axes
    namespace: dict = {}
    exec(text, namespace)
    x = np.random.default_rng(0).standard_normal((2, 6, 3, 4))
    out, _ = namespace["spatial_groupnorm_forward"](x, np.ones((1, 6, 1, 1)),
                                                    np.zeros((1, 6, 1, 1)), 3, {})
    assert out.shape != x.shape
    report = tb.check_layers(write(tmp_path, text), timeout=10,
                             only=["spatial_groupnorm_forward"])
    result = report.results["spatial_groupnorm_forward"]
    assert result.status == "fail"
    assert result.line == text[:text.index(planted)].count("\n") + 1, str(report)
    assert "gamma and beta come in shape (1, 6, 1, 1)" in result.diagnosis


def test_a_gradient_kept_with_keepdims_names_its_line(tmp_path):
    planted = "    dbeta = dout.sum(axis=0, keepdims=True)\n"
    text = HABITS.replace("    dbeta = dout.sum(axis=0)\n", planted, 1)
    report = tb.check_layers(write(tmp_path, text), timeout=10, functions=MAP,
                             only=["batchnorm_backward_alt"])
    result = report.results["batchnorm_backward_alt"]
    assert result.parts["dbeta"] == "wrong shape" and result.parts["dx"] == "right"
    assert result.line == text[:text.index(planted)].count("\n") + 1, str(report)
    assert f"Line {result.line} makes dbeta" in result.diagnosis


# --- loops over channels and groups, handing each slice to a 2-D helper ------------------
LOOPS = COMPLETE + "\n\n" + (STUDENTS / "loops.py").read_text().split("# the 2-D helpers\n", 1)[1]


def loops_namespace():
    namespace: dict = {}
    exec(compile(LOOPS, "loops", "exec"), namespace)
    return namespace


def reference_norm(x, gamma, beta, axes, eps=1e-5):
    """Ground truth without the project: x normalized over `axes` (of x grouped as given)."""
    mu = x.mean(axis=axes, keepdims=True)
    return (x - mu) / np.sqrt(x.var(axis=axes, keepdims=True) + eps)


def line_of(text, planted):
    return text.splitlines().index(planted) + 1


def test_a_loop_over_groups_passes(tmp_path):
    rng = np.random.default_rng(5)
    x, dout = rng.standard_normal((2, 6, 3, 4)), rng.standard_normal((2, 6, 3, 4))
    gamma, beta = rng.standard_normal((1, 6, 1, 1)), rng.standard_normal((1, 6, 1, 1))
    namespace = loops_namespace()
    out, cache = namespace["spatial_groupnorm_forward"](x, gamma, beta, 3, {})
    def loss(z):
        normed = reference_norm(z.reshape(2, 3, 2, 3, 4), None, None, (2, 3, 4))
        return np.sum(dout * (gamma * normed.reshape(x.shape) + beta))
    right = reference_norm(x.reshape(2, 3, 2, 3, 4), None, None, (2, 3, 4)).reshape(x.shape)
    assert np.allclose(out, gamma * right + beta)
    dx = namespace["spatial_groupnorm_backward"](dout, cache)[0]
    for index in [(0, 0, 0, 0), (1, 5, 2, 3), (0, 3, 1, 2)]:  # central differences
        step = np.zeros_like(x)
        step[index] = 1e-6
        assert abs(dx[index] - (loss(x + step) - loss(x - step)) / 2e-6) < 1e-5
    report = tb.check_layers(write(tmp_path, LOOPS), timeout=20,
                             only=["spatial_groupnorm_forward", "spatial_groupnorm_backward"])
    assert report.ok, str(report)


def test_groups_normalized_per_pixel_are_placed_on_the_rows_handed_to_the_helper(tmp_path):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 6, 3, 4))
    gamma, beta = rng.standard_normal((1, 6, 1, 1)), rng.standard_normal((1, 6, 1, 1))
    out, _ = loops_namespace()["groupnorm_forward_by_pixel"](x, gamma, beta, 3, {})
    grouped = x.reshape(2, 3, 2, 3, 4)  # the slip: over each group's channels only
    slip = reference_norm(grouped, None, None, (2,)).reshape(x.shape)
    right = reference_norm(grouped, None, None, (2, 3, 4)).reshape(x.shape)
    assert np.allclose(out, gamma * slip + beta) and not np.allclose(out, gamma * right + beta)
    mapping = {"spatial_groupnorm_forward": "groupnorm_forward_by_pixel",
               "spatial_groupnorm_backward": "groupnorm_backward_by_pixel"}
    report = tb.check_layers(write(tmp_path, LOOPS), timeout=20, functions=mapping,
                             only=list(mapping))
    planted = line_of(LOOPS, "        rows = x[:, part].transpose(0, 2, 3, 1).reshape(-1, size)")
    forward = report.results["spatial_groupnorm_forward"]
    assert (forward.status, forward.line, forward.variable) == ("fail", planted, "rows"), \
        str(report)
    assert "statistics over the group's channels only" in forward.diagnosis
    assert "group norm averages over the group's channels, H and W" in forward.diagnosis
    backward = report.results["spatial_groupnorm_backward"]  # its cache comes from that line
    assert (backward.status, backward.line, backward.function) == (
        "fail", planted, "groupnorm_forward_by_pixel"), str(report)


def test_channels_handed_to_batch_norm_are_placed_on_the_loop_line(tmp_path):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, 2, 4, 5))
    gamma, beta = rng.standard_normal(2), rng.standard_normal(2)
    out, _ = loops_namespace()["batchnorm_forward_by_channel"](
        x, gamma, beta, {"mode": "train", "eps": 1e-5, "momentum": 0.9})
    slip = reference_norm(x, None, None, (0,))  # each pixel over N only
    g, b = gamma.reshape(1, 2, 1, 1), beta.reshape(1, 2, 1, 1)
    assert np.allclose(out, g * slip + b)
    assert not np.allclose(out, g * reference_norm(x, None, None, (0, 2, 3)) + b)
    mapping = {"spatial_batchnorm_forward": "batchnorm_forward_by_channel"}
    report = tb.check_layers(write(tmp_path, LOOPS), timeout=20, functions=mapping,
                             only=list(mapping))
    result = report.results["spatial_batchnorm_forward"]
    planted = line_of(LOOPS, "        out[:, c], channel_cache = batchnorm_forward(x[:, c].reshape("
                             "N, H * W), gamma[c], beta[c], channel_param)")
    assert (result.status, result.line, result.variable) == ("fail", planted, "out"), str(report)
    assert "statistics over N only" in result.diagnosis
    assert "60 of 120 values filled so far" in result.diagnosis  # not the np.zeros line


def test_a_placeholder_dx_names_the_line_that_assigns_it(tmp_path):
    mapping = {"spatial_groupnorm_backward": "groupnorm_backward_placeholder"}
    report = tb.check_layers(write(tmp_path, LOOPS), timeout=20, functions=mapping,
                             only=list(mapping))
    result = report.results["spatial_groupnorm_backward"]
    start = line_of(LOOPS, "def groupnorm_backward_placeholder(dout, cache):")
    planted = start + LOOPS.splitlines()[start:].index("    dx = 0") + 1
    assert result.status == "fail" and result.line == planted, str(report)
    assert result.parts == {"dx": "wrong", "dgamma": "right", "dbeta": "right"}
    assert "dx has shape ()" in result.diagnosis


def test_two_slips_at_once_in_a_closed_form_are_named(tmp_path):
    rng = np.random.default_rng(8)
    x, dout = rng.standard_normal((4, 5)), rng.standard_normal((4, 5))
    gamma, beta = 1 + rng.standard_normal(5), rng.standard_normal(5)
    namespace = loops_namespace()
    _, cache = namespace["layernorm_forward"](x, gamma, beta, {})
    dx = namespace["layernorm_backward_two_slips"](dout, cache)[0]
    assert not np.allclose(dx, reference_layernorm_dx(x, gamma, dout), atol=1e-4)
    mapping = {"layernorm_backward": "layernorm_backward_two_slips"}
    report = tb.check_layers(write(tmp_path, LOOPS), timeout=20, functions=mapping,
                             only=list(mapping))
    result = report.results["layernorm_backward"]
    planted = line_of(LOOPS, "    dx = gamma * inv_std / D * (D * dout - dout.sum(axis=0) - x_norm "
                             "* (dout * x_norm).sum(axis=1, keepdims=True))")
    assert (result.status, result.line) == ("fail", planted), str(report)
    assert "two slips at once" in result.diagnosis and "over axis 0" in result.diagnosis
    assert "gamma taken out of sum(dout * gamma * xhat)" in result.diagnosis


def test_the_memory_limit_counts_from_what_the_caller_already_maps(tmp_path):
    # A caller that maps a lot (a notebook that imported torch) must not leave the student's
    # code without room: 3 GiB reserved here, never touched, and a 1 GiB budget on top.
    reserved = np.empty(3 * 2**30 // 8)
    code, status = HOSTILE["a pool"][:2]
    body = "".join("    " + line + "\n" for line in code.splitlines())
    text = COMPLETE.replace("def layernorm_forward(x, gamma, beta, ln_param):\n",
                            "def layernorm_forward(x, gamma, beta, ln_param):\n" + body)
    report = tb.check_layers(write(tmp_path, text), timeout=90, memory=2**30,
                             only=["layernorm_forward"])
    assert report.results["layernorm_forward"].status == "pass", str(report)
    # The budget still binds what the student allocates beyond it.
    huge = COMPLETE.replace("def layernorm_forward(x, gamma, beta, ln_param):\n",
                            "def layernorm_forward(x, gamma, beta, ln_param):\n"
                            "    import numpy\n    numpy.ones(2**28)\n")
    report = tb.check_layers(write(tmp_path, huge), timeout=30, memory=2**30,
                             only=["layernorm_forward"])
    assert "MemoryError" in report.results["layernorm_forward"].diagnosis, str(report)
    del reserved
