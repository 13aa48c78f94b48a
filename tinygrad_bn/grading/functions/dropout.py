"""dropout_forward / dropout_backward, judged by statistics and consistency: the kept fraction,
the inverted scaling of kept units, one mask per unit of each sample, the backward using the
forward's own mask, test mode the identity. p's meaning is read from the file's own
docstring: "drop" in the 2016-2017 assignment, "keep" since (and when the docstring says
neither)."""

from __future__ import annotations

import re

import numpy as np

from ...core.node import Node
from ...layers import dropout_mask, dropout_staged
from ..table import AssignmentFunction, Case, Seen, Slip
from .common import agrees, output
from .staged import rng_for

KEEPS = (0.3, 0.75)
SHAPE = (100, 300)  # 30,000 units: a kept fraction off by 6 standard deviations is a slip


def reads(source: str) -> dict:
    """{"p_means": "keep" or "drop", "p_read": why} from the function's docstring."""
    text = re.sub(r"\s+", " ", source.lower())
    if re.search(r"drop\w* (each )?(neuron|unit)[\w ]* with probability p", text):
        return {"p_means": "drop", "p_read": "its docstring says p is the probability of "
                                            "dropping a unit (the 2016-2017 assignment)"}
    if re.search(r"keep\w* (each )?(neuron|unit)[\w ]* with probability p", text):
        return {"p_means": "keep", "p_read": "its docstring says p is the probability of "
                                            "keeping a unit"}
    return {"p_means": "keep", "p_read": "its docstring does not say; the current assignment's "
                                        "p is the probability of keeping a unit"}


def cases(facts: dict) -> list[Case]:
    means = facts.get("p_means", "keep")
    result = []
    for index, keep in enumerate(KEEPS):
        p = keep if means == "keep" else 1 - keep
        x = rng_for("dropout", index).uniform(1.0, 2.0, SHAPE)  # never 0: a 0 out is a drop
        result.append(Case(f"train mode, p = {p:g} (keep {keep:g}), x {SHAPE}",
                           (x, {"mode": "train", "p": p, "seed": index}),
                           rng_for("dropout-dout", index).standard_normal(SHAPE),
                           {"keep": keep, "p": p, "mode": "train", **facts}))
    x = rng_for("dropout", 9).uniform(1.0, 2.0, (4, 5))
    result.append(Case("test mode", (x, {"mode": "test", "p": 0.5}),
                       rng_for("dropout-dout", 9).standard_normal((4, 5)),
                       {"keep": 0.5, "p": 0.5, "mode": "test", **facts}))
    return result


def _stats(seen: Seen) -> tuple[float, np.ndarray, np.ndarray] | None:
    out, x = output(seen, 0), seen.case.args[0]
    if out is None or out.shape != x.shape:
        return None
    kept = out != 0
    return float(kept.mean()), kept, np.asarray(out, dtype=np.float64)[kept] / x[kept]


def _near(fraction: float, keep: float) -> bool:
    sigma = np.sqrt(keep * (1 - keep) / np.prod(SHAPE))
    return abs(fraction - keep) <= 6 * sigma


def judge_forward_case(seen: Seen) -> str | None:
    out, x, facts = output(seen, 0), seen.case.args[0], seen.case.facts
    if out is None:
        return "out is missing"
    if out.shape != x.shape:
        return f"out has shape {out.shape}, expected x's {x.shape}"
    if facts["mode"] == "test":
        return None if agrees(out, x) else "test-mode out is not x itself"
    fraction, kept, ratio = _stats(seen)
    keep = facts["keep"]
    if not _near(fraction, keep):
        return (f"keeps {fraction:.3f} of the units with p = {facts['p']:g}; expected {keep:g} "
                f"(p means {facts['p_means']}: {facts['p_read']})")
    if kept.shape[0] > 1 and np.all(kept == kept[:1]):
        return "every sample drops the same units"
    if ratio.size and not agrees(ratio, np.full(ratio.shape, 1 / keep), 1e-6):
        return f"kept units are scaled by {np.median(ratio):.4g}, expected 1 / {keep:g}"
    return None


def _train(seen: Seen) -> tuple[float, np.ndarray, np.ndarray] | None:
    return _stats(seen) if seen.case.facts["mode"] == "train" else None


def _all_kept(seen: Seen) -> bool:
    stats = _train(seen)
    return stats is not None and stats[0] == 1.0


def _inverted(means: str):
    def matches(seen: Seen) -> bool:
        stats = _train(seen)
        return stats is not None and seen.case.facts["p_means"] == means and \
            _near(stats[0], 1 - seen.case.facts["keep"])
    return matches


def _batch_mask(seen: Seen) -> bool:
    stats = _train(seen)
    return stats is not None and stats[1].shape[0] > 1 and bool(np.all(stats[1] == stats[1][:1]))


def _scaled_by(scale):
    def matches(seen: Seen) -> bool:
        stats = _train(seen)
        keep = seen.case.facts["keep"]
        return stats is not None and _near(stats[0], keep) and stats[2].size > 0 and \
            agrees(stats[2], np.full(stats[2].shape, scale(seen.case.facts)), 1e-6)
    return matches


def judge_backward_case(seen: Seen) -> str | None:
    dx = output(seen, 0)
    expected = _consistent(seen)
    if expected is None:
        return "the forward's output cannot be read"
    return None if agrees(dx, expected) else (
        "dx is not dout times the mask the forward used" if seen.case.facts["mode"] == "train"
        else "test-mode dx is not dout itself")


def _consistent(seen: Seen) -> np.ndarray | None:
    """dout * (out / x): the forward is linear in x with the mask it drew."""
    out, x = seen.extra.get("forward_out"), seen.case.args[0]
    if out is None or np.shape(out) != x.shape:
        return None
    return seen.case.dout * (np.asarray(out, dtype=np.float64) / x)


def _double_scale(seen: Seen) -> bool:
    expected, dx = _consistent(seen), output(seen, 0)
    if expected is None or dx is None or seen.case.facts["mode"] != "train":
        return False
    return any(agrees(dx, expected / s) for s in (seen.case.facts["p"], seen.case.facts["keep"]))


def staged(case: Case):
    """The staged dropout with the mask of the checker's own draw for this case."""
    x = case.args[0]
    uniform = rng_for("dropout-mask", 0).uniform(size=x.shape)
    mask = dropout_mask(x.shape, case.facts["keep"], uniform, x.dtype)
    return dropout_staged(Node(x, name="x"), mask)["out"], case.dout


_DRAW = "draw"

ENTRIES = (
    AssignmentFunction(
        "dropout_forward", "forward", ("x", "dropout_param"), ("out", "cache"), cases,
        lambda case: (case.args[0],), judge_case=judge_forward_case, reads=reads,
        slips=(
            Slip("dropout-precedence",
                 "Division binds tighter than '<', so rand < p / p compares with 1 and keeps "
                 "every unit; parenthesize the comparison and then divide by p.", _all_kept,
                 locate=_DRAW),
            Slip("dropout-keep-inverted",
                 "This file's docstring says p is the probability of keeping a unit, but the "
                 "mask keeps a unit with probability 1 - p (p used as the drop probability).",
                 _inverted("keep"), locate=_DRAW),
            Slip("dropout-docstring-mismatch",
                 "This file's docstring says p is the probability of dropping a unit, but the "
                 "mask keeps a unit with probability p: code and docstring disagree (the "
                 "2016-2017 template said drop, later ones say keep).", _inverted("drop"),
                 locate=_DRAW),
            Slip("dropout-batch-mask",
                 "Each unit of each sample is dropped independently; a mask of shape (1, D) "
                 "drops the same units in every sample of the batch.", _batch_mask, locate=_DRAW),
            Slip("dropout-unscaled",
                 "Inverted dropout divides the kept units by the keep probability so the "
                 "expected output equals the input; a plain 0/1 mask makes training outputs "
                 "smaller than test outputs.", _scaled_by(lambda f: 1.0), locate=_DRAW),
            Slip("dropout-mixed-scale",
                 "With p the drop probability (this file's docstring) a unit is kept with "
                 "probability 1 - p, so the kept units must be divided by 1 - p, not by p.",
                 _scaled_by(lambda f: 1 / (1 - f["keep"])), locate=_DRAW),
        ),
        about="inverted dropout: statistics of the mask, test mode the identity"),
    AssignmentFunction(
        "dropout_backward", "backward", ("dout", "cache"), ("dx",), cases,
        lambda case: (), forward="dropout_forward", judge_case=judge_backward_case, reads=reads,
        staged=staged,
        slips=(Slip("dropout-backward-double-scale",
                    "The mask stored in the cache already holds the 1/p scaling, so the "
                    "backward is just dout * mask; dividing by p again scales the gradient "
                    "twice.", _double_scale),),
        about="consistent with the student's own forward: dout times the same mask"),
)
