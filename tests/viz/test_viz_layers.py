"""Pictures of the assignment's other staged layers: the graph drawn with its named stages
(a convolution's windows one node with its shape), and the stepper's lines of numpy."""

import numpy as np
import pytest

import tinygrad_bn as tb
import viz
from tinygrad_bn import layers
from tinygrad_bn.core.node import trace_backward
from viz.stepper import steps_of


def conv_pool_loss(rng):
    x = tb.Node(rng.standard_normal((2, 3, 5, 5)), name="x")
    w = tb.Node(rng.standard_normal((4, 3, 3, 3)), name="w")
    b = tb.Node(np.zeros(4), name="b")
    conv = layers.conv_staged(x, w, b, stride=1, padding=1)
    pooled = layers.max_pool_staged(conv["out"], 2, 2, 1)["out"]
    return layers.softmax_staged(pooled.reshape(2, -1), [0, 3])["loss"], conv


def test_the_conv_graph_draws_its_stages_and_one_windows_node():
    loss, conv = conv_pool_loss(np.random.default_rng(0))
    loss.backward()
    svg = viz.draw(loss).svg()
    for name in ("xpad", "windows", "cols", "wcols", "scores", "conv", "shifted", "picked", "loss"):
        assert f">{name}: " in svg or f">{name}<" in svg, name
    assert svg.count("windows 3x3 axis=(2, 3)") == 1
    assert svg.count("windows 2x2 axis=(2, 3)") == 1
    assert "2×3×5×5×3×3 float64" in svg  # the windows' shape on their one node


def test_the_stepper_page_walks_a_conv_net(tmp_path):
    loss, _ = conv_pool_loss(np.random.default_rng(1))
    page = tmp_path / "steps.html"
    viz.stepper(loss, page)
    text = page.read_text()
    for name in ("dwindows", "dxpad", "dcols", "dpicked", "dlog_probs"):
        assert name in text, name
    assert "np.add.at(dlog_probs, (np.arange(2), np.array([0, 3])), dpicked)" in text


@pytest.mark.parametrize("build", [
    lambda rng: layers.softmax_staged(tb.Node(rng.standard_normal((5, 4)), name="x"),
                                      [0, 3, 1, 1, 2])["loss"],
    lambda rng: layers.svm_staged(tb.Node(rng.standard_normal((5, 4)), name="x"), [0, 3, 1, 1, 2])["loss"],
    lambda rng: (layers.affine_staged(tb.Node(rng.standard_normal((3, 2, 2)), name="x"),
                                      tb.Node(rng.standard_normal((4, 3)), name="w"),
                                      tb.Node(rng.standard_normal(3), name="b"))["out"] ** 2)
    .named("sq").sum().named("total"),
    lambda rng: tb.maximum(tb.Node(rng.standard_normal((3, 1)), name="a"),
                           tb.Node(rng.standard_normal(4), name="c")).named("larger")
    .max(axis=0).named("top").sum().named("total"),
    lambda rng: tb.concatenate([tb.pad(tb.Node(rng.standard_normal((2, 2)), name="a"), 1).named("padded"),
                                tb.Node(rng.standard_normal((1, 4)), name="c")]).named("joined")
    .sum().named("total"),
])
def test_the_numpy_lines_compute_the_engines_numbers(build):
    """Each step's line of numpy, run in order on the forward values, gives the engine's part."""
    out = build(np.random.default_rng(2))
    scope = {"np": np, **{n.name: n.data for n in tb.graph_nodes(out) if n.name and n.name.isidentifier()}}
    steps = steps_of(out)
    scope[steps[0]["gradient"]] = np.float64(1.0)  # the seed
    for step, (_node, total) in zip(steps, trace_backward(out)):
        if step["sum"]:
            exec(step["sum"], scope)  # noqa: S102 - the page's own code, on our own arrays
        if step["gradient"] in scope:
            np.testing.assert_allclose(scope[step["gradient"]], total, rtol=1e-12, atol=1e-14)
        for send in step["sends"]:
            exec(send["line"], scope)  # noqa: S102
