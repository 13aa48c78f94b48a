"""Notebooks: `check notebook.ipynb` judges the functions its code cells define (lines told as
"cell C, line L"; cells that load data, train or plot are not run), and the module the notebook
imports; in Jupyter a report shows itself inline (a notebook executed for real by nbclient)."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import nbclient
import nbformat
import numpy as np
import pytest

import tinygrad_bn as tb
import viz
from tinygrad_bn.grading.notebook import notebook_program

ASSIGNMENT = pathlib.Path(__file__).resolve().parents[1] / "students" / "assignment"
POOL = ("max_pool_forward_naive", "max_pool_backward_naive")


def functions_of(file: str) -> list[str]:
    """The file's top-level blocks (its docstring and imports, then one per function)."""
    return [b.strip("\n") for b in re.split(r"\n(?=def )", (ASSIGNMENT / file).read_text())]


def notebook(path: pathlib.Path, cells: list[str]) -> pathlib.Path:
    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_markdown_cell("# Convolutional networks"))
    nb.cells += [nbformat.v4.new_code_cell(c) for c in cells]
    nbformat.write(nb, path)
    return path


def marker_place(path: pathlib.Path, marker: str) -> str:
    nb = nbformat.read(path, as_version=4)
    for number, cell in enumerate(nb.cells, 1):
        for line, text in enumerate(cell.source.splitlines(), 1):
            if marker in text:
                return f"cell {number}, line {line}"
    raise AssertionError(marker)


@pytest.fixture
def pool_notebook(tmp_path):
    cells = ["%matplotlib inline\nimport numpy as np\nimport matplotlib.pyplot as plt",
             "data = np.load('the-dataset-is-not-here.npz')\nplt.plot(data['x'])"]
    cells += functions_of("slips_max_pool.py")
    cells.append("while True:\n    pass  # training that never ends: never run by the check")
    return notebook(tmp_path / "ConvolutionalNetworks.ipynb", cells)


def test_a_notebook_is_judged_by_its_cells_with_cell_and_line(pool_notebook):
    report = tb.check_layers(pool_notebook, only=list(POOL) + ["affine_forward"])
    assert report.error is None, report.error
    assert report.results["affine_forward"].ok
    forward, backward = (report.results[n] for n in POOL)
    assert forward.variant == "pool-width-from-height"
    assert forward.where == marker_place(pool_notebook, "# SLIP: the output width computed")
    assert backward.variant == "pool-assign-overlap"
    assert backward.where == marker_place(pool_notebook, "# SLIP: assigns instead of adding")
    assert backward.where in backward.diagnosis.lower() and "line 175" not in backward.diagnosis.lower()


def test_the_program_keeps_definitions_and_leaves_out_what_computes(pool_notebook):
    program = notebook_program(pool_notebook)
    assert "np.load" not in program.source and "while True" not in program.source
    assert "try:\n    import matplotlib.pyplot as plt\nexcept ImportError:" in program.source
    assert program.defined[:2] == ["affine_forward", "affine_backward"]
    line = program.source.splitlines().index("def affine_forward(x, w, b):") + 1
    assert program.where(line) == "cell 5, line 1"  # markdown, magics, data, imports first


def test_a_notebook_from_the_command_line_and_one_importing_cs231n_layers(tmp_path):
    package = tmp_path / "cs231n"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "layers.py").write_text((ASSIGNMENT / "slips_conv_pad.py").read_text())
    relu = [b for b in functions_of("slips_affine_relu.py") if b.startswith("def relu_backward")]
    path = notebook(tmp_path / "FullyConnectedNets.ipynb",
                    ["import numpy as np\nfrom cs231n.layers import *"] + relu)
    run = subprocess.run([sys.executable, "-m", "tinygrad_bn", "check", str(path), "--only",
                          "relu_backward,conv_backward_naive,affine_forward"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 1, run.stderr
    text = run.stdout
    place = marker_place(path, "# SLIP: the mask taken from dout")
    assert re.search(r"relu_backward\s+FAIL .*" + re.escape(place), text, re.IGNORECASE), text
    # from the module it imports: judged too, its line that module's own
    assert re.search(r"conv_backward_naive\s+FAIL .*Line 141, `dx`: .*pad:-pad", text), text
    assert re.search(r"affine_forward\s+PASS", text), text


def test_in_jupyter_a_report_shows_itself_inline():
    relu = [b for b in functions_of("slips_affine_relu.py") if b.startswith("def relu_")]
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import numpy as np\nimport tinygrad_bn as tb")]
    nb.cells += [nbformat.v4.new_code_cell(c) for c in relu]
    nb.cells.append(nbformat.v4.new_code_cell(
        "tb.check_layers(globals(), only=['relu_forward', 'relu_backward'])"))
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3").execute()
    outputs = nb.cells[-1].outputs
    assert outputs[0]["output_type"] == "execute_result"
    page = outputs[0]["data"]["text/html"]
    assert "<table" in page and "relu_backward" in page and ">FAIL<" in page and ">PASS<" in page
    assert "the sign of dout says nothing" in page
    assert "<code>dx = dout * (dout &gt; 0)  # SLIP" not in page  # a cell's file is not a .py


def test_inline_html_escapes_the_students_text():
    def relu_forward(x):
        raise ValueError("<script>alert(1)</script>")
    report = tb.check_layers({"relu_forward": relu_forward})
    page = report._repr_html_()
    assert "<script>" not in page and "&lt;script&gt;" in page and ">ERROR<" in page


def test_a_stepper_page_shows_itself_inline(tmp_path):
    x = tb.Node(np.arange(6.0).reshape(2, 3), name="x")
    page = viz.stepper((x * x).sum(), tmp_path / "steps.html")
    assert page == tmp_path / "steps.html" and page.is_file()
    shown = page._repr_html_()
    assert shown.startswith("<iframe sandbox='allow-scripts' srcdoc=\"&lt;!DOCTYPE html&gt;")
    assert "<script" not in shown  # the page is escaped into the frame's srcdoc
