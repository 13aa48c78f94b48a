"""Graphviz pictures of tinygrad_bn graphs: values, shapes and gradients on the nodes.

    import viz
    graph = viz.draw(out)                 # .source is DOT; displays inline in Jupyter
    viz.render(graph, "graphs/bn.svg")    # svg without a system Graphviz; png/pdf with one
    viz.draw_comparison(x, gamma, beta)   # staged and fused side by side, with verdicts
    viz.draw_backward(tb.grad(out, [x], dout, create_graph=True), out)   # the backward pass
    viz.stepper(loss, "steps.html")       # the backward pass step by step, in a browser
    viz.check_report_page(tb.check_layers("layers.py"), "report.html")   # a student's beside it
"""

from .backend import FORMATS, RenderError, backend_name, render_source
from .draw import Graph, draw, draw_backward, draw_comparison, render
from .layer_page import report_page as check_report_page
from .stepper import stepper

__all__ = ["Graph", "draw", "draw_backward", "draw_comparison", "stepper", "check_report_page",
           "render", "render_source", "backend_name", "RenderError", "FORMATS"]
