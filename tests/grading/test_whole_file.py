"""The whole layers.py judged: every function of the assignment's students in
`students/assignment/` checked (as a class, in parallel) and compared with `ground_truth.py`:
the verdict of every function, and for each slip its name, its line (the `# SLIP:` marker's)
and a reason; then the class summary, the JSON and Gradescope files, the command line.

Every file is checked. By default the slip files are checked on the table's functions (the
normalizations' own tests judge those) and the correct files on every function;
TINYGRAD_BN_FULL_GROUND_TRUTH=1 checks every function of every file (about twice as long).
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from tinygrad_bn.grading.batch import JSON_SCHEMA, check_many
from tinygrad_bn.grading.layers import check_layers
from tinygrad_bn.grading.table import ASSIGNMENT_NAMES, NORMALIZATION_NAMES, TABLE

ASSIGNMENT = pathlib.Path(__file__).resolve().parents[1] / "students" / "assignment"


def _ground_truth() -> dict:
    spec = importlib.util.spec_from_file_location("assignment_ground_truth",
                                                  ASSIGNMENT / "ground_truth.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.FILES


TRUTH = _ground_truth()


FULL = os.environ.get("TINYGRAD_BN_FULL_GROUND_TRUTH") == "1"


@pytest.fixture(scope="module")
def batch():
    if FULL:
        return check_many([ASSIGNMENT / f for f in TRUTH], workers=2)
    correct = [f for f in TRUTH if not f.startswith("slips_")]
    whole = check_many([ASSIGNMENT / f for f in correct], workers=2)
    table = check_many([ASSIGNMENT / f for f in TRUTH if f not in correct], workers=2,
                       only=list(TABLE))
    whole.reports += table.reports
    return whole


@pytest.fixture(scope="module")
def reports(batch):
    return {pathlib.Path(r.source).name: r for r in batch.reports}


def marker_lines(file: str, marker: str) -> list[int]:
    lines = (ASSIGNMENT / file).read_text().splitlines()
    return [i + 1 for i, text in enumerate(lines) if marker in text]


def test_the_table_has_one_entry_per_function_of_the_assignment():
    assert set(ASSIGNMENT_NAMES) == set(next(iter(TRUTH.values()))["functions"])
    assert set(TABLE) | set(NORMALIZATION_NAMES) == set(ASSIGNMENT_NAMES)
    for entry in TABLE.values():
        assert entry.cases({}) and entry.signature and entry.returns
        for slip in entry.slips:
            assert len(slip.reason.split()) >= 6, (entry.name, slip.name)


@pytest.mark.parametrize("file", list(TRUTH))
def test_every_verdict_agrees_with_the_ground_truth(reports, file):
    report = reports[file]
    assert report.error is None, report.error
    disagreements = []
    for name, row in TRUTH[file]["functions"].items():
        if name not in report.results and not FULL and name not in TABLE:
            continue
        result = report.results[name]
        if result.status != row["verdict"]:
            disagreements.append(f"{name}: {result.status} ({result.diagnosis[:150]}), "
                                 f"expected {row['verdict']}")
    assert disagreements == []


SLIPS = [(file, name) for file, entry in TRUTH.items() for name, row in entry["functions"].items()
         if row["verdict"] in ("fail", "error") and name in TABLE]


@pytest.mark.parametrize("file,name", SLIPS)
def test_each_slip_is_named_and_placed_on_its_marked_line(reports, file, name):
    row = TRUTH[file]["functions"][name]
    result = reports[file].results[name]
    assert result.variant == row["slip"]
    holder = row.get("marker_in", name)
    assert result.function == holder
    assert result.line in marker_lines(file, row["marker"])
    assert len(result.diagnosis.split()) >= 10


def test_dropout_says_how_it_read_p(reports):
    old = reports["habits_old_dropout.py"].results["dropout_forward"]
    assert old.ok and "p read as the drop probability" in old.diagnosis
    assert "p read as the keep probability" in reports["complete.py"].results[
        "dropout_forward"].diagnosis


def test_writes_into_the_inputs_are_noted_not_failed(reports):
    inplace = reports["habits_inplace.py"]
    for name in ("relu_backward", "dropout_backward", "softmax_loss"):
        result = inplace.results[name]
        assert result.ok and any("in place" in w for w in result.warnings), name


def test_the_report_lists_every_function_and_counts_them_all(tmp_path):
    source = (ASSIGNMENT / "complete.py").read_text()
    source = source.replace("def relu_forward(", "def helper_scale(x):\n    return 2 * x\n\n\n"
                                                 "def relu_forwrd(")
    path = tmp_path / "layers.py"
    path.write_text(source)
    report = check_layers(path)
    text = str(report)
    assert "relu_forward: not found; did you mean relu_forwrd?" in text
    assert "helper_scale" in text and "NOT JUDGED" in text
    assert report.counts()["not judged"] == 2  # the helper and the misspelt name
    assert report.results["relu_backward"].status == "error"  # its forward is missing
    assert "19 of 20 functions pass" in text.splitlines()[-1]


def validate(value, schema, where="$"):
    """The JSON Schema keywords JSON_SCHEMA uses, checked strictly."""
    kinds = {"object": dict, "array": list, "string": str, "integer": int, "null": type(None)}
    if "const" in schema:
        assert value == schema["const"], where
    if "enum" in schema:
        assert value in schema["enum"], where
    if "type" in schema:
        allowed = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        assert any(isinstance(value, kinds[k]) and not isinstance(value, bool) for k in allowed), \
            (where, value)
    for key in schema.get("required", []):
        assert key in value, (where, key)
    for key, sub in schema.get("properties", {}).items():
        if key in value:
            validate(value[key], sub, f"{where}.{key}")
    if "additionalProperties" in schema:
        for key, item in value.items():
            if key not in schema.get("properties", {}):
                validate(item, schema["additionalProperties"], f"{where}.{key}")
    if "items" in schema:
        for i, item in enumerate(value):
            validate(item, schema["items"], f"{where}[{i}]")


def test_the_class_summary_json_and_gradescope(batch):
    data = json.loads(json.dumps(batch.to_json()))
    validate(data, JSON_SCHEMA)
    counts = data["summary"]["functions"]["max_pool_backward_naive"]
    assert counts["fail"] == sum(e["functions"]["max_pool_backward_naive"]["verdict"] == "fail"
                                 for e in TRUTH.values()) == 3
    assert sum(counts.values()) == len(TRUTH)
    assert {"function": "conv_backward_naive", "slip": "conv-unpad-negative", "files": 1} in \
        data["summary"]["slips"]
    text = batch.summary_text()
    assert "max_pool_backward_naive" in text and "most common slips" in text
    grades = batch.gradescope()
    assert len(grades["tests"]) == len(TRUTH) * len(ASSIGNMENT_NAMES)
    for test in grades["tests"]:
        assert set(test) == {"name", "score", "max_score", "output"}
        assert test["score"] in (0.0, 1.0) and test["max_score"] == 1.0 and test["output"]


def test_the_schema_refuses_what_it_does_not_describe(batch):
    data = batch.to_json()
    data["files"][0]["functions"]["affine_forward"]["status"] = "maybe"
    with pytest.raises(AssertionError):
        validate(data, JSON_SCHEMA)


def test_a_batch_from_the_command_line_survives_a_bad_submission(tmp_path):
    for name, text in (("good", (ASSIGNMENT / "complete.py").read_text()),
                       ("broken", "def affine_forward(x, w, b)\n"),
                       ("slips", (ASSIGNMENT / "slips_max_pool.py").read_text())):
        (tmp_path / name).mkdir()
        (tmp_path / name / "layers.py").write_text(text)
    out = tmp_path / "results.json"
    grades = tmp_path / "gradescope.json"
    run = subprocess.run([sys.executable, "-m", "tinygrad_bn", "check", str(tmp_path), "--only",
                          "max_pool_forward_naive,max_pool_backward_naive", "--json", str(out),
                          "--gradescope", str(grades)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 1, run.stderr
    assert "[3/3]" in run.stdout and "cannot be loaded" in run.stdout
    assert "pool-assign-overlap" in run.stdout
    data = json.loads(out.read_text())
    validate(data, JSON_SCHEMA)
    assert [pathlib.Path(f["path"]).parent.name for f in data["files"]] == ["broken", "good", "slips"]
    assert data["files"][0]["error"] and data["summary"]["unreadable"] == 1
    assert json.loads(grades.read_text())["tests"]


HOSTILE = [
    ("    out = None\n    x_rows", "    import sys\n    sys.exit(3)\n    out = None\n    x_rows"),
    ("    out = np.maximum(0, x)\n", "    out = None\n"),  # the template's stub
    ('    W\' = 1 + (W + 2 * pad - WW) / stride, and cache (x, w, b, conv_param).\n    """\n',
     '    W\' = 1 + (W + 2 * pad - WW) / stride, and cache (x, w, b, conv_param).\n    """\n'
     '    while True:\n        pass\n'),
    ("    N = x.shape[0]\n    correct = x[np.arange(N), y]",
     "    return object(), 'no gradient'\n    N = x.shape[0]\n    correct = x[np.arange(N), y]"),
]


def test_hostile_functions_are_told_apart_and_the_rest_still_judged(tmp_path):
    source = (ASSIGNMENT / "complete.py").read_text()
    for old, new in HOSTILE:
        assert source.count(old) == 1, old
        source = source.replace(old, new)
    path = tmp_path / "layers.py"
    path.write_text(source)
    names = ["affine_forward", "affine_backward", "relu_forward", "relu_backward",
             "conv_forward_naive", "conv_backward_naive", "svm_loss", "softmax_loss"]
    report = check_layers(path, only=names, timeout=3.0)
    results = report.results
    assert results["affine_forward"].status == "error"
    assert "sys.exit(3)" in results["affine_forward"].diagnosis
    assert results["relu_forward"].status == "not implemented"
    for name in ("conv_forward_naive", "conv_backward_naive"):
        assert results[name].status == "error"
        assert "timed out after 3 s while running conv_forward_naive" in results[name].diagnosis
    assert results["svm_loss"].status == "error"
    assert "loss is not an array of numbers" in results["svm_loss"].diagnosis
    assert results["softmax_loss"].ok and results["relu_backward"].ok
    assert report.counts() == {"pass": 2, "fail": 0, "error": 5, "not implemented": 1,
                               "not judged": 0, "absent": 0}


def test_code_for_python_2_or_an_older_numpy_is_named_so(tmp_path):
    source = (ASSIGNMENT / "complete.py").read_text()
    for old, new in (("    x_rows = x.reshape(x.shape[0], -1)\n",
                      "    x_rows = x.reshape(x.shape[0], np.product(x.shape[1:]))\n"),
                     ("    out = np.maximum(0, x)\n",
                      "    out = np.array([max(0, v) for i in xrange(1) for v in x.ravel()])\n"),
                     ("    mode = bn_param[\"mode\"]\n    eps = bn_param.get(\"eps\", 1e-5)\n"
                      "    momentum = bn_param.get(\"momentum\", 0.9)\n    N, D = x.shape\n",
                      "    mode = bn_param[\"mode\"]\n    eps = bn_param.get(\"eps\", 1e-5)\n"
                      "    momentum = bn_param.get(\"momentum\", 0.9)\n"
                      "    N, D = x.shape[0], np.product(x.shape[1:])\n")):
        assert source.count(old) == 1, old
        source = source.replace(old, new)
    path = tmp_path / "layers.py"
    path.write_text(source)
    lines = source.splitlines()
    report = check_layers(path, only=["affine_forward", "relu_forward", "batchnorm_forward"])
    for name, slip, text in (("affine_forward", "removed-numpy-api", "np.product("),
                             ("relu_forward", "python-2", "xrange(1)"),
                             ("batchnorm_forward", "removed-numpy-api", "np.product(")):
        result = report.results[name]
        assert (result.status, result.variant) == ("error", slip)
        assert text in lines[result.line - 1]


def test_values_no_entry_foresaw_are_that_functions_error_not_a_crash(monkeypatch):
    import dataclasses

    from tinygrad_bn.grading import table

    def unforeseen(seen):
        raise ZeroDivisionError("a judge meeting values it did not foresee")

    monkeypatch.setitem(table.TABLE, "relu_forward",
                        dataclasses.replace(table.TABLE["relu_forward"], judge_case=unforeseen))
    report = check_layers({"relu_forward": lambda x: (np.maximum(x, 0), x)})
    result = report.results["relu_forward"]
    assert result.status == "error"
    assert "cannot be judged: the check failed on its values (ZeroDivisionError" in result.diagnosis
