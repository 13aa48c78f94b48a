"""A smoke run of the convolution and max-pooling benchmark on tiny shapes: the three ways
agree (it checks before timing) and its tables have their rows."""

import re

import pytest

from benchmarks.layers import check_equal, main, run


def test_layers_bench_smoke_prints_both_tables(capsys):
    assert main(["--smoke"]) == 0
    text = capsys.readouterr().out
    for title, baseline in (("conv", "numpy im2col"), ("max pool", "numpy reshape")):
        assert f"| {title} | min (ms) | median (ms) | rounds | vs {baseline} |" in text
    rows = re.findall(r"^\| (engine staged|numpy im2col|numpy reshape|naive loops) \| ([\d.]+) \| "
                      r"([\d.]+) \| 1 \| ([\d.]+)x \|$", text, flags=re.MULTILINE)
    assert [r[0] for r in rows] == ["engine staged", "numpy im2col", "naive loops",
                                    "engine staged", "numpy reshape", "naive loops"]
    assert "outputs agree within" in text


def test_the_benchmark_refuses_implementations_that_disagree():
    import numpy as np

    with pytest.raises(AssertionError, match="wrong departs from the first implementation"):
        check_equal({"right": (np.ones(3),), "wrong": (np.array([1.0, 1.0, 1.1]),)})
    assert "numpy im2col" in run(smoke=True, rounds=1, loops=False)
