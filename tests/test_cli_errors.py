"""The real `tinygrad-bn` executable on ordinary mistakes: one line naming the option, no
traceback, exit code 2 for usage and 1 at run time."""

import pathlib
import subprocess
import sys

import numpy as np
import pytest

import tinygrad_bn as tb

EXE = pathlib.Path(sys.executable).with_name("tinygrad-bn")


def run(*args, **kwargs):
    return subprocess.run([str(EXE), *map(str, args)], capture_output=True, text=True,
                          timeout=300, **kwargs)


@pytest.mark.parametrize("args,code,words", [
    (["compare", "--eps", "inf"], 2, "argument --eps: expected a finite number > 0, got 'inf'"),
    (["explain", "--eps", "1e400"], 2, "argument --eps: expected a finite number > 0"),
    (["render", "--eps", "inf"], 2, "argument --eps: expected a finite number > 0"),
    (["experiment", "--seed", "-1"], 2, "argument --seed: expected an integer >= 0, got '-1'"),
    (["compare", "--seed", "-1"], 2, "argument --seed: expected an integer >= 0"),
    (["compare", "--shape", "3"], 2, "argument --shape: expected 2 or 4 positive sizes"),
    (["compare", "--groups", "2"], 2, "--groups: only group norm has groups"),
    (["compare", "--norm", "group", "--groups", "4"], 2,
     "--groups: expected a divisor of the channel count C=6, got 4"),
    (["compare", "--norm", "group", "--shape", "2,6"], 2, "--shape: expected shape (N, C, H, W)"),
    (["render", "--out", "/proc/x.svg"], 1, "--out: cannot write /proc/x.svg"),
    (["render", "--format", "png", "--out", "x.svg"], 2,
     "--out: the suffix '.svg' disagrees with --format png"),
    (["render", "--out", "x.txt"], 2, "--out: unknown suffix '.txt'"),
    (["render", "--graph", "compare", "--format", "html"], 2,
     "--format html: the stepper walks the staged or fused graph"),
    (["demo", "--out-dir", "/proc/version"], 2, "--out-dir: cannot write graphs to /proc/version"),
])
def test_mistakes_give_one_line_and_an_exit_code(args, code, words, tmp_path):
    result = run(*args, cwd=tmp_path)
    assert result.returncode == code, result.stderr
    assert words in result.stderr
    assert "Traceback" not in result.stderr
    message = [line for line in result.stderr.splitlines() if words in line][0]
    option = words.split(":")[0].replace("argument ", "")
    assert message.count(option) == 1  # the option is named once


def test_version_and_a_closed_pipe():
    version = run("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"tinygrad-bn {tb.__version__}"
    piped = subprocess.run(f"'{EXE}' explain --values --norm spatial --shape 20,8,10,10 | head -1",
                           shell=True, capture_output=True, text=True, timeout=300)
    assert piped.stdout.startswith("Backward pass of the staged spatial batch norm")
    assert "Traceback" not in piped.stderr and "BrokenPipe" not in piped.stderr


def test_demo_shape_reaches_explain_and_the_graphs(tmp_path):
    result = run("demo", "--shape", "6,3", "--out-dir", tmp_path / "g")
    assert result.returncode == 0, result.stderr
    assert "x (6, 3), reduced over axes (0,)" in result.stdout  # the explain section
    assert "6×3 float64" in (tmp_path / "g" / "staged.svg").read_text()


def test_explain_columns_never_run_together():
    result = run("explain", "--norm", "group", "--shape", "2,6,4,5")
    lines = result.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("stage "))
    rows = lines[header + 1:lines.index("", header)]
    assert {row.split()[0] for row in rows} >= {"xg", "xhat_c", "mu", "out"}
    start = lines[header].index("sends |grad| to")
    for row in rows:  # the column starts where its header does, after two spaces
        assert row[start - 2:start] == "  " and row[start] != " "
    assert "sum(xmu) = 0 over each sample's group of channels (axes (2, 3, 4)" in result.stdout


def test_reports_show_as_tables_in_notebooks():
    rng = np.random.default_rng(0)
    report = tb.compare_batchnorm(rng.standard_normal((6, 3)), np.ones(3), np.zeros(3))
    assert "| dx |" in report._repr_markdown_() and "verdict: ok" in report._repr_markdown_()
    from tinygrad_bn.check.explain import explain_normalization
    text = explain_normalization("batch", rng.standard_normal((4, 3)), np.ones(3), np.zeros(3),
                                 rng.standard_normal((4, 3)))._repr_markdown_()
    assert "| xhat | mul |" in text
    assert tb.check_layers({})._repr_markdown_().startswith("**the given functions**")
    from benchmarks.run import Report
    assert Report("| a |")._repr_markdown_() == "| a |"


def test_the_public_modules_are_attributes():
    assert tb.optim.SGD and tb.loss.softmax_cross_entropy and tb.nn.BatchNorm
    assert tb.cs231n.batchnorm_forward


# Sizes and names the machine cannot take: one line, before any work, never a traceback.
LONG = "é" * 200  # 400 bytes: longer than any file system's name limit


def _one_line(result, code, *words):
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1, result.stderr
    for word in words:
        assert word in result.stderr, result.stderr


@pytest.mark.parametrize("args, words", [
    (["explain", "--values", "--shape", "65536,65536"],
     ["explain: error: --shape: x (65536, 65536) has 4.29e+09 values; explain needs about",
      "try --shape "]),
    (["render", "--shape", "100000000,100000000"],
     ["render: error: --shape: x (100000000, 100000000) has 1e+16 values; render needs"]),
    (["render", "--graph", "compare", "--shape", "100000000,100000000"],
     ["render: error: --shape: x (100000000, 100000000) has 1e+16 values; compare needs"]),
    (["demo", "--shape", "100000000,10"], ["demo: error: --shape: x (100000000, 10)"]),
])
def test_a_sample_too_large_for_memory_is_refused_before_any_array(args, words, tmp_path):
    result = run(*args, cwd=tmp_path)
    _one_line(result, 2, *words)
    assert list(tmp_path.iterdir()) == []  # not even the default folder


@pytest.mark.parametrize("args, code, words", [
    (["render", "--out", LONG + ".svg"], 1, "--out: cannot write"),
    (["render", "--out", LONG + "/g.svg"], 1, "--out: cannot write"),
    (["check", LONG + ".py"], 2, "path: cannot read"),
    (["explain", "--load", LONG + ".npz"], 2, "--load: cannot read"),
    (["experiment", "--plot", LONG], 2, "--plot: cannot write to"),
    (["demo", "--out-dir", LONG], 2, "--out-dir: cannot write graphs to"),
])
def test_a_name_too_long_for_the_file_system_says_so(args, code, words, tmp_path):
    _one_line(run(*args, cwd=tmp_path), code, words, "too long")


def _headers_only(path, arrays):
    """An .npz whose members have headers (shape, dtype) and no data: what a huge case
    looks like before anything is read."""
    import io
    import zipfile

    with zipfile.ZipFile(path, "w") as archive:
        for name, (shape, descr) in arrays.items():
            header = io.BytesIO()
            np.lib.format.write_array_header_1_0(
                header, {"descr": descr, "fortran_order": False, "shape": shape})
            archive.writestr(f"{name}.npy", header.getvalue())


def test_explain_load_checks_each_array_before_loading_it(tmp_path):
    _headers_only(tmp_path / "huge.npz", {"kind": ((), "<U5"), "x": ((65536, 65536), "<f8"),
                                          "gamma": ((65536,), "<f8"), "beta": ((65536,), "<f8"),
                                          "dout": ((65536, 65536), "<f8")})
    np.savez(tmp_path / "text.npz", kind=np.array("batch"), x=np.array([["a", "b"]] * 2),
             gamma=np.ones(2), beta=np.ones(2), dout=np.ones((2, 2)))
    np.savez(tmp_path / "objects.npz", kind=np.array("batch"), gamma=np.ones(2),
             x=np.array([[1, None]] * 2, dtype=object), beta=np.ones(2), dout=np.ones((2, 2)))
    np.savez(tmp_path / "kind.npz", kind=np.ones(1), x=np.ones((2, 2)), gamma=np.ones(2),
             beta=np.ones(2), dout=np.ones((2, 2)))
    np.save(tmp_path / "plain.npy", np.ones(3))
    for name, words in (("huge.npz", "huge.npz holds 8.59e+09 values; explaining them needs"),
                        ("text.npz", "text.npz: x holds <U1 values of shape (2, 2), expected "
                                     "float32 or float64 numbers"),
                        ("objects.npz", "objects.npz: x holds object values"),
                        ("kind.npz", "kind.npz: kind holds float64 values of shape (1,), "
                                     "expected one string"),
                        ("plain.npy", "plain.npy is not a saved case (not an .npz archive)")):
        _one_line(run("explain", "--values", "--load", name, cwd=tmp_path), 2,
                  f"explain: error: --load: {words}")


def test_an_option_of_the_wrong_type_is_one_line(capsys):
    from tinygrad_bn.cli import main as _main
    with pytest.raises(SystemExit) as stopped:
        _main(["check", "layers.py", "--timeout", "abc"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines() == ["tinygrad-bn check: error: argument --timeout: invalid float "
                                "value: 'abc' (see tinygrad-bn check --help)"]


def test_check_help_names_every_exit_code(capsys):
    from tinygrad_bn.cli import main as _main
    with pytest.raises(SystemExit):
        _main(["check", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "Exits 0 when every defined function passes, 1 otherwise, 2 when the file cannot be " \
           "loaded or for a usage error." in out
