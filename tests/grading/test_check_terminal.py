"""The terminal around a check: the saved case and its explanation, which function they are
about, options that do not apply, and advice only where it applies."""

import pathlib
import subprocess
import sys

import tinygrad_bn as tb
from tinygrad_bn.check.explain import explain, format_values

STUDENTS = pathlib.Path(__file__).resolve().parents[1] / "students"
SLIPS = STUDENTS / "assignment" / "slips_norm.py"
COMPLETE = STUDENTS / "assignment" / "complete.py"
EXE = pathlib.Path(sys.executable).with_name("tinygrad-bn")


def run(*args, cwd=None):
    return subprocess.run([str(EXE), *map(str, args)], capture_output=True, text=True,
                          timeout=120, cwd=cwd)


def test_the_saved_case_shows_its_function_branch_parts_and_yours(tmp_path):
    report = tb.check_layers(SLIPS, only=["layernorm_backward"], timeout=20)
    assert report.save_case(tmp_path / "case.npz") == "layernorm_backward"
    text = format_values(explain(load=tmp_path / "case.npz"))
    assert text.startswith("the case of layernorm_backward (layer norm)")
    for part in ("dxmu1 = ", "dxmu2 = ", "dx1 = ", "dx2 = ", "yours (what the function "):
        assert part in text, text


def test_a_running_statistics_case_shows_the_running_statistics(tmp_path):
    report = tb.check_layers(SLIPS, only=["batchnorm_forward"], timeout=20)
    assert report.save_case(tmp_path / "case.npz") == "batchnorm_forward"
    text = format_values(explain(load=tmp_path / "case.npz"))
    assert "running_var = momentum * running_var" in text, text


def test_save_case_and_the_page_are_about_the_same_function():
    report = tb.check_layers(SLIPS, only=["batchnorm_forward", "layernorm_backward"], timeout=20)
    from viz.report import chosen_function
    assert report.focus() == chosen_function(report) == "layernorm_backward"


def test_data_options_with_load_are_refused_in_one_line(tmp_path):
    report = tb.check_layers(SLIPS, only=["layernorm_backward"], timeout=20)
    report.save_case(tmp_path / "case.npz")
    result = run("explain", "--load", tmp_path / "case.npz", "--shape", "3,4")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "tinygrad-bn explain: error: --shape: not used with --load (the saved case brings its "
        "own data); leave it out"]


def test_advice_only_when_it_applies(tmp_path):
    advice = "`tinygrad-bn check --save-case case.npz`"
    failing = run("check", SLIPS, "--only", "layernorm_backward")
    assert failing.returncode == 1 and advice in failing.stdout
    saved = run("check", SLIPS, "--only", "layernorm_backward", "--save-case", tmp_path / "c.npz")
    assert saved.returncode == 1 and advice not in saved.stdout
    passing = run("check", COMPLETE, "--only", "layernorm_backward")
    assert passing.returncode == 0 and advice not in passing.stdout
    slow = tmp_path / "layers.py"
    slow.write_text("import time\n\ndef layernorm_forward(x, gamma, beta, ln_param):\n"
                    "    time.sleep(30)\n")
    timed_out = run("check", slow, "--timeout", "1")
    assert timed_out.returncode == 1 and "timed out" in timed_out.stdout
    assert advice not in timed_out.stdout
