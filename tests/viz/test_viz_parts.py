"""Where a gradient comes from: branch parts that add up, sums over broadcast axes, in
`explain` and for any graph."""

import numpy as np

import tinygrad_bn as tb
from tinygrad_bn.check.explain import explain_batchnorm, format_explanation
from tinygrad_bn.check.parts import backward_steps, summed_axes


def test_parts_add_up_to_the_engines_gradient_in_any_graph():
    rng = np.random.default_rng(0)
    a = tb.Node(rng.standard_normal((3, 4)), name="a")
    b = tb.Node(rng.standard_normal(4), name="b")
    out = ((a * b).tanh() + a * a + b).sum()
    steps = {s.gradient: s for s in backward_steps(out)}
    out.backward()
    # a feeds mul (with b) and a * a (twice): three parts, numbered in the order they arrive.
    assert [p.name for p in steps["da"].parts] == ["da1", "da2", "da3"]
    np.testing.assert_allclose(sum(p.value for p in steps["da"].parts), a.grad, rtol=1e-12)
    np.testing.assert_allclose(sum(p.value for p in steps["db"].parts), b.grad, rtol=1e-12)
    assert all(p.summed == ((0,), ()) for p in steps["db"].parts)


def test_summed_axes():
    assert summed_axes((4, 5), (5,)) == ((0,), ())
    assert summed_axes((4, 5), (1, 5)) == ((), (0,))
    assert summed_axes((2, 3, 4, 5), (3, 1, 1)) == ((0,), (2, 3))
    assert summed_axes((4, 5), (4, 5)) == ((), ())


def test_explain_names_the_branches_and_the_broadcast_sums():
    rng = np.random.default_rng(1)
    text = format_explanation(explain_batchnorm(rng.standard_normal((4, 5)), np.ones(5),
                                                np.zeros(5), rng.standard_normal((4, 5))))
    lines = text.splitlines()
    assert any(line.startswith("  dxmu = dxmu1 + dxmu2   (dxmu1 via xhat |dxmu1| ") and
               "dxmu2 via sq" in line for line in lines)
    assert any(line.startswith("  dx = dx1 + dx2   (dx1 via xmu") and "dx2 via mu" in line
               for line in lines)
    assert ("  dgamma: summed over axis 0: gamma (5,) was broadcast over axis 0 (4 rows) of "
            "gammax (4, 5)") in text
    assert "  divar: summed over axis 0: ivar (1, 5)" in text
