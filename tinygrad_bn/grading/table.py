"""What the checker knows of each function of the assignment's `layers.py`, as data.

One `AssignmentFunction` per function: its signature, the cases it is called on (inputs that
expose what the notebooks hide, only shapes the assignment allows), the staged reference,
the known slips with the words a student reads and the rule that finds their line, and the
tolerance. The entries live in `functions/`, one file per layer; the judge (`entries.py`), the
locator (`where.py`) and the report read them and never name a layer.

The normalizations have their own, older judge (`judge.py`, `catalogue.py`); they are listed
here with `judged_by="normalization"` so that the report lists every function of the file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Case", "Seen", "Slip", "AssignmentFunction", "ENVIRONMENT_SLIPS", "TABLE",
           "ASSIGNMENT_NAMES", "NORMALIZATION_NAMES", "entry"]


@dataclass
class Case:
    """One call of a function: `args` for the forward (or the loss), `dout` for a backward
    (the reference output's shape), `label` said in the report, `facts` the case's numbers
    (sizes, the keep probability, ...) slips and locators read."""

    label: str
    args: tuple[Any, ...]
    dout: np.ndarray | None = None
    facts: dict[str, Any] = field(default_factory=dict)


@dataclass
class Seen:
    """What one call gave: the outputs (float arrays; None when it raised), the error's text
    and the line it was raised on, the reference's outputs, and the snapshots of a traced
    re-run (empty when not traced)."""

    case: Case
    outputs: tuple[np.ndarray, ...] | None
    expected: tuple[np.ndarray, ...]
    error: str | None = None
    error_line: int | None = None
    snapshots: list[Any] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Slip:
    """A known wrong variant: `name`, the `reason` a student reads, `matches(seen)` telling it
    from the student's values, and where its line is: `locate` names a rule of `where.py`
    ("returns", "creation", "size", "float-size", "nonfinite", "draw", "part", "raised"),
    `output` the output it follows."""

    name: str
    reason: str
    matches: Callable[[Seen], bool]
    locate: str = "returns"
    output: int = 0


@dataclass(frozen=True)
class AssignmentFunction:
    """One function of the assignment.

    direction: "forward", "backward" or "loss"; forward: the function whose cache a backward
    takes; signature, returns: the assignment's names; cases(facts) -> the Cases (facts read
    from the file: `reads` parses the function's source, e.g. dropout's docstring);
    reference(case) -> the staged graph's outputs; judge_case(seen) -> a problem sentence or
    None (default: every output within `tolerance`, normwise); slips: the known wrong
    variants, in the order they are tried; part(case) -> the correct items (one per row) a
    "part" rule matches snapshots against; staged(case) -> (root node, upstream gradient) of
    the staged graph whose backward pass the function's is (shown by `explain --load` and
    `check --html`)."""

    name: str
    direction: str
    signature: tuple[str, ...]
    returns: tuple[str, ...]
    cases: Callable[[dict[str, Any]], list[Case]]
    reference: Callable[[Case], tuple[np.ndarray, ...]]
    slips: tuple[Slip, ...] = ()
    forward: str | None = None
    tolerance: float = 1e-8
    judge_case: Callable[[Seen], str | None] | None = None
    reads: Callable[[str], dict[str, Any]] | None = None
    part: Callable[[Case], np.ndarray] | None = None
    staged: Callable[[Case], tuple[Any, Any]] | None = None
    about: str = ""
    judged_by: str = "table"


def _raised(*texts: str) -> Callable[[Seen], bool]:
    return lambda seen: seen.error is not None and any(t in seen.error for t in texts)


# Errors that are not the math: code written for Python 2 or for an older numpy.
ENVIRONMENT_SLIPS = (
    Slip("size-float-division",
         "In Python 3, '/' gives a float even when it divides exactly, and range() or an index "
         "refuses a float: use '//' (or int()) for sizes (code written for Python 2).",
         _raised("'float' object cannot be interpreted as an integer",
                 "slice indices must be integers", "only integers, slices"),
         locate="float-size"),
    Slip("python-2",
         "This is Python 2 code (xrange, iteritems, print statement): the checker runs Python 3.",
         _raised("'xrange' is not defined", "has no attribute 'iteritems'",
                 "has no attribute 'itervalues'"), locate="raised"),
    Slip("removed-numpy-api",
         "This numpy function or keyword was removed from numpy (np.product: use np.prod; "
         "reshape(newshape=...): pass the shape itself; unravel_index(dims=...): use shape=).",
         _raised("has no attribute 'product'", "unexpected keyword argument 'newshape'",
                 "unexpected keyword argument 'dims'", "has no attribute 'asscalar'",
                 "has no attribute 'float'", "has no attribute 'int'"), locate="raised"),
)


NORMALIZATION_NAMES = ("batchnorm_forward", "batchnorm_backward", "batchnorm_backward_alt",
                       "layernorm_forward", "layernorm_backward", "spatial_batchnorm_forward",
                       "spatial_batchnorm_backward", "spatial_groupnorm_forward",
                       "spatial_groupnorm_backward")


def _table() -> dict[str, AssignmentFunction]:
    import dataclasses

    from .functions import affine, conv, dropout, losses, pool, relu
    layers = (affine, relu, dropout, conv, pool, losses)
    table = {e.name: e for layer in layers for e in layer.ENTRIES}
    for e in list(table.values()):  # a forward shows the staged graph its backward has
        if e.forward is not None and e.staged is not None and table[e.forward].staged is None:
            table[e.forward] = dataclasses.replace(table[e.forward], staged=e.staged)
    return table


TABLE: dict[str, AssignmentFunction] = _table()


# Every function of the assignment's layers.py, in the file's order.
ASSIGNMENT_NAMES = tuple(TABLE) + NORMALIZATION_NAMES


def entry(name: str) -> AssignmentFunction:
    """The table's entry for `name` (a KeyError names the functions it has)."""
    if name not in TABLE:
        raise KeyError(f"name: expected one of {', '.join(TABLE)}, got {name!r}")
    return TABLE[name]
