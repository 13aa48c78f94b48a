"""The benchmark's cases beyond first-order normalization: the batch-norm Hessian-vector
product both sides time computes the same thing; every large case has a cache-resident
variant; the machine line names the CPU's caches and SIMD width."""

import numpy as np
import pytest

from benchmarks import run, worker


def test_the_hessian_vector_products_timed_on_both_sides_agree():
    torch = pytest.importorskip("torch")
    x, gamma, beta, weight, direction = worker._inputs("hvp", (16, 8), "float64")
    ours = worker.NumpySide().hvp_step(x, gamma, beta, weight, direction)()
    tensors = [torch.from_numpy(a.copy()) for a in (x, gamma, beta, weight, direction)]
    tensors[0].requires_grad_(True)
    theirs = worker.TorchSide().hvp_step(*tensors)().numpy()
    assert ours.shape == x.shape and np.abs(ours).max() > 0
    np.testing.assert_allclose(ours, theirs, rtol=1e-9, atol=1e-12)
    assert worker.NumpySide().bn("engine_staged", "hvp", (16, 8), "float64", None, 2)["times"]


def test_every_large_case_has_a_cache_resident_variant():
    large = [c for c in run.FULL_CASES if c.size * c.itemsize >= 8 << 20]
    for case in large:
        small = [c for c in run.FULL_CASES if c.kind == case.kind and c.dtype == case.dtype
                 and (1 << 19) <= c.size * c.itemsize <= (2 << 20)]
        assert small, case.name
    assert any(c.kind == "hvp" for c in run.FULL_CASES + run.QUICK_CASES)


def test_round_ratios_are_medians_of_per_round_ratios():
    rounds = {"engine_fused_numba": [1.0, 9.0, 2.0], "torch": [2.0, 3.0, 2.0]}
    assert run.round_ratio(rounds, "engine_fused_numba", "torch") == 1.0
    assert run.round_ratio(rounds, "engine_fused", "torch") is None


def test_the_machine_line_names_simd_width_and_available_cores():
    text = run.cpu_description()
    assert "available to this process" in text
    assert any(width in text for width in ("512-bit", "256-bit", "128-bit", "unknown SIMD"))
