"""The README's first Python snippets run in the order a reader meets them."""

import os
import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def snippets() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_the_api_and_the_graph_snippets_run_in_order(tmp_path):
    pytest.importorskip("graphviz")
    first, second = snippets()[:2]
    assert "dout" in second and "viz.stepper" in second  # the graph snippet uses the API's dout
    namespace: dict = {}
    here = os.getcwd()
    os.chdir(tmp_path)  # the graphs land in the test's own folder
    try:
        exec(compile(first, "README first snippet", "exec"), namespace)
        exec(compile(second, "README graph snippet", "exec"), namespace)
    finally:
        os.chdir(here)
    assert (tmp_path / "graphs" / "staged.svg").is_file()
    assert (tmp_path / "graphs" / "steps.html").is_file()
