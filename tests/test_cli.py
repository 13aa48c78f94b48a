"""The command line, run the way users run it."""

import os
import subprocess
import sys

import pytest

from tinygrad_bn.cli import main
from tinygrad_bn.norm import STAGE_NAMES


def test_compare_prints_a_table_and_exits_zero(capsys):
    assert main(["compare", "--shape", "16,8", "--dtype", "float32", "--seed", "3"]) == 0
    text = capsys.readouterr().out
    assert "x (16, 8) float32" in text and "verdict   ok" in text
    for grad in ("dx", "dgamma", "dbeta"):
        assert any(line.startswith(grad + " ") for line in text.splitlines())


def test_compare_nchw(capsys):
    assert main(["compare", "--shape", "2,3,4,5"]) == 0
    assert "reduced over axes (0, 2, 3)" in capsys.readouterr().out


def test_explain_lists_every_stage_in_backward_order(capsys):
    assert main(["explain"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [line.split()[0] for line in lines if line.split() and line.split()[0] in STAGE_NAMES]
    assert rows == list(reversed(STAGE_NAMES))
    assert any("variance path" in line for line in lines)


def test_bad_arguments_exit_two(capsys):
    with pytest.raises(SystemExit) as error:
        main(["compare", "--shape", "3"])
    assert error.value.code == 2
    assert "--shape: expected 2 or 4 positive sizes" in capsys.readouterr().err


@pytest.mark.parametrize("command", [[sys.executable, "-m", "tinygrad_bn"], ["tinygrad-bn"]])
def test_entry_points_have_help(command, tmp_path):
    bindir = os.path.dirname(sys.executable)
    if command[0] == "tinygrad-bn":
        command = [os.path.join(bindir, "tinygrad-bn")]
        if not os.path.exists(command[0]):
            pytest.skip("console script not installed in this environment")
    result = subprocess.run(command + ["--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "compare" in result.stdout and "explain" in result.stdout
    result = subprocess.run(command + ["demo", "--shape", "8,4", "--out-dir", str(tmp_path)],
                            capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("verdict   ok") == 2 and "sqrtvar" in result.stdout


def test_progress_says_when_the_time_went_to_compiling(capsys, monkeypatch):
    import time as _time

    from tinygrad_bn import cli
    compiled = [0]
    show = cli.progress_printer("numeric check", after=0.0, kernels=lambda: compiled[0])
    compiled[0] = 3  # kernels compiled while the first coordinates ran
    _time.sleep(0.01)
    show(20, 200)
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("numeric check: compiling the fast kernels (first run only;")
    show(200, 200)  # said once
    err = capsys.readouterr().err
    assert "compiling" not in err and err.startswith("numeric check: 200 of 200 coordinates")
