"""Every normalization bug pattern gets its line and a reason in words: the assignment's
ground-truth students and the pattern students of `tests/students/patterns.py`."""

import pathlib
import sys

import numpy as np
import pytest

import tinygrad_bn as tb
from tinygrad_bn.grading.agree import TOLERANCE, agrees
from tinygrad_bn.grading.catalogue import MATCH_TOLERANCE
from tinygrad_bn.grading.judge import is_template_stub

STUDENTS = pathlib.Path(__file__).parents[1] / "students"
sys.path.insert(0, str(STUDENTS))
sys.path.insert(0, str(STUDENTS / "assignment"))
from ground_truth import FILES  # noqa: E402
from patterns import PATTERNS  # noqa: E402

COMPLETE = (STUDENTS / "assignment" / "complete.py").read_text()
NO_REASON = "matches none of the known slips"


def _norm_functions() -> tuple[str, ...]:
    from tinygrad_bn.grading.assignment import FUNCTIONS
    return tuple(FUNCTIONS)


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_each_pattern_gets_its_line_and_a_named_reason(name, tmp_path):
    function, old, new, status, words = PATTERNS[name]
    assert COMPLETE.count(old) == 1
    text = COMPLETE.replace(old, new)
    path = tmp_path / "layers.py"
    path.write_text(text)
    report = tb.check_layers(path, only=[function], timeout=20)
    result = report.results[function]
    marked = next(i + 1 for i, line in enumerate(text.splitlines()) if "# SLIP" in line)
    assert (result.status, result.line) == (status, marked), str(report)
    assert words in result.diagnosis, str(report)
    assert NO_REASON not in result.diagnosis


# a test mode without gamma and beta inside the batch norm that spatial batch norm calls:
# the helper's value is a right xhat there, so the line is the judged function's, where its
# output is made
HELPER_CALL = {("slips_norm_test_mode.py", "spatial_batchnorm_forward")}
CASES = [(f, n) for f, info in sorted(FILES.items()) for n, truth in info["functions"].items()
         if n in _norm_functions() and truth["verdict"] != "pass"]


@pytest.mark.parametrize("file,function", CASES)
def test_ground_truth_normalization_slips_get_a_line_and_a_reason(file, function):
    truth = FILES[file]["functions"][function]
    path = STUDENTS / "assignment" / file
    lines = path.read_text().splitlines()
    report = tb.check_layers(path, only=[function], timeout=20)
    result = report.results[function]
    assert result.status == truth["verdict"], str(report)
    assert NO_REASON not in result.diagnosis, str(report)
    if "marker" in truth and (file, function) not in HELPER_CALL:
        marked = [i + 1 for i, line in enumerate(lines) if truth["marker"] in line]
        assert result.line in marked, str(report)


def test_the_trace_and_the_verdict_agree_on_what_agrees():
    assert MATCH_TOLERANCE == TOLERANCE
    right = np.linspace(1, 2, 10)
    assert agrees(right * (1 + 1e-12), right)
    assert not agrees(right * (1 + 2.5e-6), right)  # an eps-sized slip disagrees in both


def test_digits_too_close_to_tell_apart_are_said_to_differ(tmp_path):
    function, old, new, _, _ = PATTERNS["eps outside the sqrt in dvar"]
    path = tmp_path / "layers.py"
    path.write_text(COMPLETE.replace(old, new))
    result = tb.check_layers(path, only=[function], timeout=20).results[function]
    assert "dvar" in result.diagnosis
    assert "(too small to show in 5 digits)" in result.diagnosis or \
        "eps outside the square root in dvar" in result.diagnosis


def test_a_stub_backward_behind_a_crashing_forward_is_not_implemented(tmp_path):
    text = COMPLETE.replace("    var = np.mean(xmu ** 2, axis=1, keepdims=True)\n",
                            "    var = np.mean(xmu ** 2, axis=2, keepdims=True)\n")
    start = text.index("def layernorm_backward(")
    end = text.index("def spatial_batchnorm_forward(")
    text = text[:start] + ('def layernorm_backward(dout, cache):\n    """stub"""\n'
                           '    dx, dgamma, dbeta = None, None, None\n'
                           '    return dx, dgamma, dbeta\n\n\n') + text[end:]
    path = tmp_path / "layers.py"
    path.write_text(text)
    report = tb.check_layers(path, only=["layernorm_forward", "layernorm_backward"], timeout=20)
    assert report.results["layernorm_forward"].status == "error"
    assert report.results["layernorm_backward"].status == "not implemented", str(report)


def test_template_stub_recognized_by_its_body():
    def stub(dout, cache):
        """Nothing yet."""
        dx, dgamma = None, None
        pass
        return dx, dgamma

    def done(dout, cache):
        dx = dout * 2
        return dx
    assert is_template_stub(stub) and not is_template_stub(done)


def test_a_departure_no_slip_explains_is_still_said_in_words(tmp_path):
    from patterns import UNNAMED
    for name, (function, old, new, words) in UNNAMED.items():
        text = COMPLETE.replace(old, new)
        path = tmp_path / "layers.py"
        path.write_text(text)
        result = tb.check_layers(path, only=[function], timeout=20).results[function]
        marked = next(i + 1 for i, line in enumerate(text.splitlines()) if "# SLIP" in line)
        assert (result.status, result.line) == ("fail", marked), (name, result.diagnosis)
        assert words in result.diagnosis, (name, result.diagnosis)


def test_a_factor_between_two_counts_is_named():
    from tinygrad_bn.grading.locate import factor_text
    assert factor_text(20.0, 60, {3: "N"}) == (
        "times 60/3: looks like a division by N = 3 where the count 60 belongs")


def test_a_cache_holding_numpy_scalars_is_judged_not_misfit(tmp_path):
    # np.float64 is a float: the box's record of it and the checker's must be the same
    text = COMPLETE.replace("    cache = (xhat, gamma, ivar)\n    return out, cache\n",
                            "    cache = (xhat, gamma, ivar, np.float64(eps))\n"
                            "    return out, cache\n").replace(
        "    xhat, gamma, ivar = cache\n    D = dout.shape[1]\n",
        "    xhat, gamma, ivar, _ = cache\n    D = dout.shape[1]\n")
    path = tmp_path / "layers.py"
    path.write_text(text)
    report = tb.check_layers(path, only=["layernorm_forward", "layernorm_backward"], timeout=20)
    assert report.ok, str(report)
