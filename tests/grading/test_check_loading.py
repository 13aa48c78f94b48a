"""Loading a student's file as courses receive it: alone, importing course modules or
packages the checker lacks, inside a folder, through another file, or as a notebook."""

import pathlib
import subprocess
import sys

import pytest

import tinygrad_bn as tb

STUDENTS = pathlib.Path(__file__).resolve().parents[1] / "students"
COMPLETE = (STUDENTS / "assignment" / "complete.py").read_text()
EXE = pathlib.Path(sys.executable).with_name("tinygrad-bn")
ONLY = ["layernorm_forward", "layernorm_backward"]


def test_a_file_alone_importing_course_modules_loads_with_them_stubbed(tmp_path):
    path = tmp_path / "layers.py"  # no cs231n/ folder anywhere
    path.write_text("from cs231n.im2col import *\nfrom cs231n.fast_layers import conv_forward_fast\n"
                    + COMPLETE)
    report = tb.check_layers(path, only=ONLY, timeout=20)
    assert report.error is None and report.ok, str(report)
    assert any("cs231n.im2col" in note and "course module" in note for note in report.notes)


def test_a_package_the_checker_lacks_is_stubbed_with_a_note_naming_its_python(tmp_path):
    path = tmp_path / "layers.py"
    path.write_text("import nosuchpackage_for_the_checker.signal\n" + COMPLETE)
    report = tb.check_layers(path, only=ONLY, timeout=20)
    assert report.error is None and report.ok, str(report)
    note = next(n for n in report.notes if "nosuchpackage_for_the_checker" in n)
    assert "not installed in the checker's Python" in note


def test_a_folder_means_the_layers_py_in_it(tmp_path):
    (tmp_path / "cs231n").mkdir()
    (tmp_path / "cs231n" / "layers.py").write_text(COMPLETE)
    for folder in (tmp_path, tmp_path / "cs231n"):
        report = tb.check_layers(folder, only=ONLY, timeout=20)
        assert report.ok and report.source.endswith("layers.py"), str(report)


def test_a_notebook_and_an_empty_folder_get_one_clear_line(tmp_path):
    notebook = tmp_path / "BatchNormalization.ipynb"
    notebook.write_text("{}")
    empty = tmp_path / "empty"
    empty.mkdir()
    for path, words in ((notebook, "expected a notebook with a list of cells"),
                        (empty, "holds no layers.py")):
        run = subprocess.run([str(EXE), "check", str(path)], capture_output=True, text=True,
                             timeout=60)
        assert run.returncode == 2 and run.stdout == "", run
        assert len(run.stderr.strip().splitlines()) == 1 and words in run.stderr, run.stderr
        with pytest.raises(ValueError, match="path: "):
            tb.check_layers(path)


def test_a_mapping_to_a_missing_function_says_so(tmp_path):
    path = tmp_path / "layers.py"
    path.write_text(COMPLETE)
    report = tb.check_layers(path, only=["batchnorm_forward"], timeout=20,
                             functions={"batchnorm_forward": "nosuch"})
    assert "batchnorm_forward" not in report.results
    assert any("defines no function nosuch" in note for note in report.notes), str(report)
    assert "defines no function nosuch" in str(report)


def test_lines_in_another_file_than_the_one_checked_carry_its_name(tmp_path):
    folder = tmp_path / "cs231n"
    folder.mkdir()
    (folder / "layers.py").write_text(COMPLETE.replace("    D = dout.shape[1]\n",
                                                       "    D = dout.shape[0]\n"))
    (folder / "fc_net.py").write_text("from cs231n.layers import *\n")
    report = tb.check_layers(folder / "fc_net.py", only=["layernorm_backward"], timeout=20)
    result = report.results["layernorm_backward"]
    assert result.status == "fail" and "of layers.py" in result.diagnosis, str(report)
