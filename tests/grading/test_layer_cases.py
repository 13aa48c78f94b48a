"""--save-case / explain --load and --html for every function of the table: each saved case
rebuilds the judged inputs and shows the function's staged graph stage by stage; each page
steps through that graph with the verdicts above it."""

from __future__ import annotations

import importlib.util
import json
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

import tinygrad_bn as tb
from tinygrad_bn.grading.casefile import explain_layer_case, load_layer_case
from tinygrad_bn.grading.table import TABLE
from viz.layer_page import layer_report_page, page_function

ASSIGNMENT = pathlib.Path(__file__).resolve().parents[1] / "students" / "assignment"


def _truth() -> dict:
    spec = importlib.util.spec_from_file_location("truth_for_cases", ASSIGNMENT / "ground_truth.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.FILES


TRUTH = _truth()


def failing_file(name: str) -> str:
    """A student of the ground truth whose `name` fails on its own slip."""
    return next(f for f, e in TRUTH.items() if e["functions"][name]["verdict"] == "fail"
                and e["functions"][name]["slip"] != "from-the-forward")


@pytest.mark.parametrize("name", [n for n in TABLE if n not in ("relu_forward", "affine_forward",
                                                                  "svm_loss")] + ["svm_loss"])
def test_a_failing_case_is_saved_explained_and_paged(name, tmp_path):
    report = tb.check_layers(ASSIGNMENT / failing_file(name), only=[name])
    result = report.results[name]
    assert result.status == "fail" and result.case
    saved = tmp_path / "case.npz"
    assert report.save_case(saved) == name
    loaded, case, outputs = load_layer_case(saved)
    assert loaded == name and any(k.startswith("student_") for k in outputs)
    text = explain_layer_case(saved)
    assert text.startswith(f"{name} on the saved case")
    root, _ = TABLE[name].staged(case)
    assert f"{root.name} {tuple(root.shape)} = " in text
    page = layer_report_page(report, tmp_path / "page.html", name)
    data = page.read_text()
    assert name in data and "</html>" in data
    steps = json.loads(re.search(r"const DATA = (\{.*?\});\n", data, re.S).group(1)
                       .replace("\\u003c", "<")) if "const DATA = " in data else None
    if steps is not None:
        assert steps["report"]["shown"] == name and steps["steps"]


def test_a_passing_function_gets_a_page_of_its_first_case(tmp_path):
    report = tb.check_layers(ASSIGNMENT / "complete.py", only=["relu_backward", "affine_forward"])
    assert report.ok and page_function(report) == "relu_backward"
    assert "relu_backward" in layer_report_page(report, tmp_path / "p.html", "relu_backward").read_text()


def test_the_command_line_saves_explains_and_pages(tmp_path):
    case, page = tmp_path / "case.npz", tmp_path / "page.html"
    run = subprocess.run([sys.executable, "-m", "tinygrad_bn", "check",
                          str(ASSIGNMENT / "slips_max_pool.py"), "--only",
                          "max_pool_backward_naive", "--save-case", str(case), "--html", str(page)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 1, run.stderr
    assert "saved the case of max_pool_backward_naive" in run.stdout
    assert page.is_file() and "max_pool_backward_naive" in page.read_text()
    explained = subprocess.run([sys.executable, "-m", "tinygrad_bn", "explain", "--values",
                                "--load", str(case)], capture_output=True, text=True, timeout=300)
    assert explained.returncode == 0, explained.stderr
    assert "windows (1, 2, 3, 5, 3, 3) = " in explained.stdout and "yours   dx = " in explained.stdout


def test_a_saved_case_holding_text_where_numbers_belong_is_refused(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, layer=np.array("relu_backward"), input_x=np.array(["not numbers"]))
    with pytest.raises(ValueError, match="input_x holds"):
        load_layer_case(path)
    np.savez(path, layer=np.array("sigmoid_backward"))
    with pytest.raises(ValueError, match="names no function of the assignment"):
        load_layer_case(path)


def test_viz_check_report_page_takes_every_function_and_shows_itself(tmp_path):
    import viz
    report = tb.check_layers(ASSIGNMENT / "slips_max_pool.py",
                             only=["max_pool_backward_naive", "batchnorm_forward"])
    page = viz.check_report_page(report, tmp_path / "page.html")
    data = json.loads(re.search(r"const DATA = (\{.*?\});\n", page.read_text(), re.S).group(1))
    assert data["report"]["shown"] == "max_pool_backward_naive"
    assert page._repr_html_().startswith("<iframe")
    norm = viz.check_report_page(report, tmp_path / "norm.html", function="batchnorm_forward")
    assert norm._repr_html_().startswith("<iframe")
