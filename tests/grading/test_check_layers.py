"""check_layers on a catalogue of students: correct code, the write-up's code as written, and
planted bugs, each with the stage the diagnosis must name."""

import pathlib
import subprocess
import sys
import types

import numpy as np
import pytest

import tinygrad_bn as tb

STUDENTS = pathlib.Path(__file__).resolve().parents[1] / "students"
SEED = (STUDENTS / "seed_fixed.py").read_text()
COMPLETE = (STUDENTS / "complete.py").read_text()
EXE = pathlib.Path(sys.executable).with_name("tinygrad-bn")

STUB_BACKWARD = '''def batchnorm_backward(dout, cache):
    dx, dgamma, dbeta = None, None, None
    pass
    return dx, dgamma, dbeta


def batchnorm_backward_alt('''

# name: (base text, [(old, new)], function, status, stage, words the diagnosis must hold)
PLANTED = {
    "variance path left out": (SEED, [("dx_k1 = dx_1 + dx_2", "dx_k1 = dx_1")],
                               "batchnorm_backward", "fail", "dxmu2",
                               "is computed but never used from here on"),
    "mean path left out": (SEED, [("dx = dx_k1 + dx_k2", "dx = dx_k1")], "batchnorm_backward",
                           "fail", "dx2", "the branch through mu (dx2 = dmu / N) left out"),
    "direct path left out": (SEED, [("dx = dx_k1 + dx_k2", "dx = np.zeros_like(dout) + dx_k2")],
                             "batchnorm_backward", "fail", "dx",
                             "dx2 = dmu / N (the branch through mu) alone"),
    "dx of the wrong shape": (SEED, [("dx = dx_k1 + dx_k2", "dx = dx_k2")], "batchnorm_backward",
                              "fail", "dx", "dx has shape (5,), expected x's shape (4, 5)"),
    "1/(N-1) in the variance": (SEED, [("(x - mu) * dvar / len(dout)",
                                        "(x - mu) * dvar / (len(dout) - 1)")],
                                "batchnorm_backward", "fail", "dxmu2", "dxmu2 times N/(N-1) = 4/3"),
    "a missing 2": (SEED, [("dx_2 = 2 * (x - mu)", "dx_2 = (x - mu)")], "batchnorm_backward",
                    "fail", "dxmu2", "half as large: a missing factor 2"),
    "a sign": (SEED, [("dstd = -np.sum(", "dstd = np.sum(")], "batchnorm_backward", "fail", "dsqrtvar",
               "dsqrtvar with its sign flipped"),
    "dgamma without x_hat": (SEED, [("    dgamma = (dout * x_hat).sum(axis=0)\n\n    dx_hat",
                                     "    dgamma = dout.sum(axis=0)\n\n    dx_hat")],
                             "batchnorm_backward", "fail", "dgamma",
                             "dgamma = sum(dout): the factor xhat is missing"),
    "dbeta over the wrong axis": (SEED, [("    dbeta = dout.sum(axis=0)\n",
                                          "    dbeta = dout.sum(axis=1)\n")],
                                  "batchnorm_backward", "fail", "dbeta",
                                  "dbeta has shape (4,), expected (5,): it is the sum over axis 1"),
    "momentum reversed": (SEED, [("running_mean = momentum * running_mean + (1 - momentum) * x_mean",
                                  "running_mean = (1 - momentum) * running_mean + momentum * x_mean")],
                          "batchnorm_forward", "fail", "running_mean",
                          "running_mean = (1 - momentum) * running_mean + momentum * batch: the "
                          "momentum is used the wrong way round"),
    "unbiased variance": (SEED, [("var = np.var(x, axis=0)", "var = np.var(x, axis=0, ddof=1)")],
                          "batchnorm_forward", "fail", "var", "the unbiased variance 1/(N-1)"),
    "cache modified in place": (SEED, [("    dbeta = dout.sum(axis=0)\n     \n",
                                        "    x -= mu\n    mu = 0\n    dbeta = dout.sum(axis=0)\n     \n")],
                                "batchnorm_backward", "fail", None,
                                "modifies the cache's arrays in place (cache[0])"),
    "endless loop": (SEED, [("def batchnorm_backward(dout, cache):\n",
                             "def batchnorm_backward(dout, cache):\n    while True:\n        pass\n")],
                     "batchnorm_backward", "error", None,
                     "timed out after 2 s while running batchnorm_backward"),
    "backward stub": (SEED, [("def batchnorm_backward(dout, cache):", "def unused_backward(dout, cache):"),
                             ("def batchnorm_backward_alt(", STUB_BACKWARD)],
                      "batchnorm_backward", "not implemented", None, "the assignment's stub"),
    "forward raises NotImplementedError": (
        SEED, [('    mode = bn_param["mode"]\n',
                '    raise NotImplementedError\n    mode = bn_param["mode"]\n')],
        "batchnorm_forward", "not implemented", None, "NotImplementedError"),
    "backward of a forward not implemented": (
        SEED, [('    mode = bn_param["mode"]\n',
                '    raise NotImplementedError\n    mode = bn_param["mode"]\n')],
        "batchnorm_backward", "not implemented", None,
        "not implemented: batchnorm_forward, whose cache it takes, is not implemented yet"),
    "layer norm mean path left out": (COMPLETE, [("(D * dxhat - dxhat.sum(axis=1, keepdims=True)\n",
                                                  "(D * dxhat\n")],
                                      "layernorm_backward", "fail", "dx",
                                      "the branch through mu (dx2 = dmu / N) left out"),
    "group norm variance path left out": (
        COMPLETE, [("(count * dxhat - dxhat.sum(axis=(2, 3, 4), keepdims=True)\n"
                    "                         - xg * (dxhat * xg).sum(axis=(2, 3, 4), keepdims=True))",
                    "(count * dxhat - dxhat.sum(axis=(2, 3, 4), keepdims=True))")],
        "spatial_groupnorm_backward", "fail", "dx", "the branch through the variance (dxmu2"),
    "spatial dgamma without keepdims": (
        COMPLETE, [("dgamma = (dout * xhat).sum(axis=(0, 2, 3), keepdims=True)",
                    "dgamma = (dout * xhat).sum(axis=(0, 2, 3))")],
        "spatial_groupnorm_backward", "fail", "gammax",
        "dgamma has the right values in shape (6,); expected (1, 6, 1, 1)"),
}


def planted(base: str, replacements: list[tuple[str, str]]) -> str:
    for old, new in replacements:
        assert old in base, old
        base = base.replace(old, new, 1)
    return base


@pytest.mark.parametrize("name", sorted(PLANTED))
def test_planted_bug_is_diagnosed(name, tmp_path):
    base, replacements, function, status, stage, words = PLANTED[name]
    path = tmp_path / "layers.py"
    path.write_text(planted(base, replacements))
    report = tb.check_layers(path, timeout=2.0)
    result = report.results[function]
    assert result.status == status, str(report)
    assert result.stage == stage, str(report)
    assert words in result.diagnosis, str(report)
    assert not report.ok
    if status == "fail" and name in PLANTED_LINE:
        # ground truth: the line the replacement put into the file, found by text search
        text = planted(base, replacements)
        marker = PLANTED_LINE[name]
        assert result.line == text[:text.index(marker)].count("\n") + 1, str(report)


def test_a_write_into_dout_is_noted_not_failed(tmp_path):
    """One rule for every function: the function gets copies, so writing into dout changes
    nothing the checker reads; a right result passes, with a note."""
    path = tmp_path / "layers.py"
    path.write_text(planted(SEED, [("    dx_hat = dout * gamma\n\n    dstd",
                                    "    dout *= gamma\n    dx_hat = dout\n\n    dstd")]))
    result = tb.check_layers(path, only=["batchnorm_backward"]).results["batchnorm_backward"]
    assert result.status == "pass"
    assert result.warnings == ["writes into dout in place (harmless here: the checker hands over "
                               "copies)"]


# The line each planted bug must be reported at (the first line holding this text).
PLANTED_LINE = {
    "variance path left out": "dx_k1 = dx_1\n", "mean path left out": "dx = dx_k1\n",
    "direct path left out": "dx = np.zeros_like", "1/(N-1) in the variance": "dx_2 = 2",
    "a missing 2": "dx_2 = (x - mu)", "a sign": "dstd = np.sum(",
    "dgamma without x_hat": "dgamma = dout.sum",
    "dbeta over the wrong axis": "dbeta = dout.sum(axis=1)",
    "momentum reversed": "running_mean = (1 - momentum)", "unbiased variance": "ddof=1",
    "layer norm mean path left out": "(D * dxhat\n",
}


@pytest.mark.parametrize("student", ["seed_fixed.py", "complete.py"])
def test_correct_students_pass(student):
    report = tb.check_layers(STUDENTS / student)
    assert report.ok, str(report)
    expected = 3 if student == "seed_fixed.py" else 9
    assert len(report.results) == expected
    assert all(r.status == "pass" and r.stage is None for r in report.results.values())


def test_the_write_up_as_written_is_a_syntax_error_with_its_line():
    report = tb.check_layers(STUDENTS / "seed_as_written.py")
    assert not report.ok and report.results == {}
    assert report.error == "SyntaxError: invalid syntax at line 55: dx_hat = dou t * gamma"


def test_modules_and_dicts_of_functions():
    module = types.ModuleType("student")
    exec(compile(SEED, "student.py", "exec"), module.__dict__)
    assert tb.check_layers(module).ok
    functions = {"batchnorm_forward": module.batchnorm_forward,
                 "batchnorm_backward_alt": module.batchnorm_backward_alt}
    report = tb.check_layers(functions, only=["batchnorm_backward_alt"])
    assert list(report.results) == ["batchnorm_backward_alt"] and report.ok


def test_argument_errors():
    with pytest.raises(FileNotFoundError, match="source: no such file"):
        tb.check_layers("no/such/layers.py")
    with pytest.raises(TypeError, match="source: expected a path, a module or a dict"):
        tb.check_layers(42)
    with pytest.raises(ValueError, match="only: expected names among"):
        tb.check_layers(STUDENTS / "complete.py", only=["sigmoid_forward"])


def test_cli_exit_codes(tmp_path):
    def run(*args):
        return subprocess.run([str(EXE), "check", *map(str, args)], capture_output=True,
                              text=True, timeout=120)

    good = run(STUDENTS / "seed_fixed.py")
    assert good.returncode == 0 and "3 of 3 functions pass" in good.stdout
    bad = tmp_path / "layers.py"
    bad.write_text(planted(SEED, PLANTED["variance path left out"][1]))
    failed = run(bad, "--only", "batchnorm_backward", "--seed", "3")
    assert failed.returncode == 1
    assert "FAIL" in failed.stdout and "[stage dxmu2]" in failed.stdout
    assert run(STUDENTS / "seed_as_written.py").returncode == 2
    missing = run(tmp_path / "nothing.py")
    assert missing.returncode == 2 and "no such file" in missing.stderr
    unknown = run(STUDENTS / "complete.py", "--only", "softmax")
    assert unknown.returncode == 2 and "--only: unknown function softmax" in unknown.stderr


def test_explain_values_prints_every_stage():
    result = subprocess.run([str(EXE), "explain", "--values"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0
    for name in tb.STAGE_NAMES:
        assert f"\n{name} = " in result.stdout and f"\nd{name} = " in result.stdout
    assert "\ndgamma = [" in result.stdout and "\ndx = shape (4, 5)" in result.stdout


def test_large_arrays_are_summarized_by_explain_values():
    from tinygrad_bn.check.explain import explain_normalization, format_values
    x = np.random.default_rng(0).standard_normal((200, 50))
    text = format_values(explain_normalization("batch", x, np.ones(50), np.zeros(50), x))
    assert "too large to print" in text


def test_the_readme_example_with_two_slips():
    report = tb.check_layers(STUDENTS / "two_slips.py")
    forward, backward, alt = (report.results[name] for name in
                              ("batchnorm_forward", "batchnorm_backward", "batchnorm_backward_alt"))
    assert (forward.status, forward.stage) == ("fail", "running_mean")
    assert "momentum" in forward.diagnosis and forward.line == 33
    assert (backward.status, backward.stage, backward.line) == ("fail", "dxmu2", 66)
    assert alt.status == "pass" and not report.ok


# Test mode in three lines, a fourth root where the square root belongs, in a variable named
# as gamma * xhat is (`scaled`).
NAMED_OTHERWISE = planted(COMPLETE, [(
    "        out = gamma * (x - running_mean) / np.sqrt(running_var + eps) + beta\n",
    "        shifted = x - running_mean\n"
    "        scaled = shifted / (running_var + eps) ** 0.25\n"
    "        out = gamma * scaled + beta\n")])


def test_a_line_matching_no_slip_is_told_the_stage_its_inputs_can_make(tmp_path):
    # `scaled` (a name for gamma * xhat) is made from x - running_mean and running_var alone,
    # with a fourth root where the square root belongs: it should be xhat, not gamma * xhat.
    path = tmp_path / "layers.py"
    path.write_text(NAMED_OTHERWISE)
    result = tb.check_layers(path, timeout=10.0).results["batchnorm_forward"]
    assert result.status == "fail" and result.parts["test"] == "wrong", result.diagnosis
    assert result.line == NAMED_OTHERWISE[:NAMED_OTHERWISE.index("scaled =")].count("\n") + 1
    assert result.variable == "scaled" and result.stage == "xhat", result.diagnosis
    assert "should be xhat = (x - running_mean) / sqrt(running_var + eps)" in result.diagnosis
