"""Layer, spatial batch and group norm: staged, fused and central differences agree; bad input."""

import numpy as np
import pytest

import tinygrad_bn as tb
from tinygrad_bn.cli import sample_batch

CASES = [
    ("layer", (1, 3), None), ("layer", (4, 5), None), ("layer", (50, 20), None),
    ("layer", (3, 2, 4, 5), None),
    ("spatial", (2, 3, 4, 5), None), ("spatial", (1, 2, 1, 1), None),
    ("group", (2, 6, 4, 5), 2), ("group", (2, 6, 4, 5), 6), ("group", (3, 4, 2, 3), 1),
]


@pytest.mark.parametrize("kind,shape,groups", CASES)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_staged_fused_numeric_agree(kind, shape, groups, dtype):
    x, gamma, beta, dout = sample_batch(shape, dtype, seed=2, kind=kind, groups=groups)
    report = tb.compare_normalization(kind, x, gamma, beta, dout, groups=groups)
    assert report.ok, str(report)
    pair, numeric = (1e-10, 1e-8) if dtype == "float64" else (3e-5, 3e-5)
    for row in report.errors.values():
        assert row["staged~fused"] < pair
        assert max(row["staged~numeric"], row["fused~numeric"]) < numeric


def test_each_norm_normalizes_the_right_axes():
    rng = np.random.default_rng(0)
    x = 3 * rng.standard_normal((4, 6, 5, 5)) + 2
    ones, zeros = np.ones(6), np.zeros(6)
    layer = tb.layernorm_fused(x, np.ones((6, 5, 5)), np.zeros((6, 5, 5))).data
    np.testing.assert_allclose(layer.mean(axis=(1, 2, 3)), 0, atol=1e-12)
    spatial = tb.spatial_batchnorm_staged(x, ones, zeros).data
    np.testing.assert_allclose(spatial.mean(axis=(0, 2, 3)), 0, atol=1e-12)
    group = tb.groupnorm_fused(x, ones, zeros, 3).data.reshape(4, 3, 2, 5, 5)
    np.testing.assert_allclose(group.mean(axis=(2, 3, 4)), 0, atol=1e-12)
    np.testing.assert_allclose(group.var(axis=(2, 3, 4)), 1, rtol=1e-3)
    assert tb.groupnorm_fused(x, ones, zeros, 3).op == "groupnorm"
    assert tb.layernorm_fused(x[:, :, 0, 0], ones, zeros).op == "layernorm"


def test_staged_group_norm_has_every_stage():
    x = tb.Node(np.random.default_rng(0).standard_normal((2, 4, 3, 3)))
    out = tb.groupnorm_staged(x, np.ones(4), np.zeros(4), 2)
    stages = tb.stages(out)
    assert set(tb.STAGE_NAMES) <= set(stages) and stages["mu"].shape == (2, 2, 1, 1, 1)


def test_bad_input():
    x4 = np.ones((2, 6, 3, 3))
    with pytest.raises(ValueError, match="groups: expected a divisor of the channel count C=6, got 4"):
        tb.groupnorm_fused(x4, np.ones(6), np.zeros(6), 4)
    with pytest.raises(ValueError, match="groups: expected a positive int, got 0"):
        tb.groupnorm_staged(x4, np.ones(6), np.zeros(6), 0)
    with pytest.raises(ValueError, match=r"x: expected shape \(N, C, H, W\), got \(2, 6\)"):
        tb.groupnorm_fused(np.ones((2, 6)), np.ones(6), np.zeros(6), 2)
    with pytest.raises(ValueError, match=r"x: expected shape \(N, C, H, W\), got \(2, 6\)"):
        tb.spatial_batchnorm_fused(np.ones((2, 6)), np.ones(6), np.zeros(6))
    with pytest.raises(ValueError, match=r"x: expected shape \(N, D\) or"):
        tb.layernorm_staged(np.ones(6), np.ones(6), np.zeros(6))
    with pytest.raises(ValueError, match=r"gamma: expected shape \(6,\).*got shape \(3,\)"):
        tb.groupnorm_fused(x4, np.ones(3), np.zeros(6), 2)
    with pytest.raises(ValueError, match=r"gamma: expected shape \(5,\).*got shape \(4,\)"):
        tb.layernorm_fused(np.ones((2, 5)), np.ones(4), np.zeros(5))
