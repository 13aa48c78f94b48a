"""Seams: the few core functions that a faster implementation may stand in for.

The core is the textbook, and it is what runs. At a handful of places, each marked with
`@seam` and saying so in its docstring ("Seam: ..."), a faster function computing the same thing
may be registered to run instead, for the calls where its condition holds: an op's VJP on
large arrays, a square's forward, the fused norm's passes, one node's step of the backward
pass. Nothing else can be replaced, and the core does not know what the stand-ins are:

    Mul.backward.seam.add(fast, when)   # fast(*args) runs where when(*args) holds
    vjp.seam.add(fast)                  # no condition: fast takes every call, handing back
                                        # to the textbook function itself where it does not apply

A seam is the textbook function wrapped once, when it is defined, by a dispatcher that
selects from its own table (`Seam.stand_ins`); no attribute is ever replaced afterwards.
A loop that calls a seam once per node asks `seam.current()` once, before it starts.
`textbook_only()` runs every seam's textbook function inside a block (of this thread).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .switch import Switch

__all__ = ["Seam", "SEAMS", "seam", "textbook_only", "stand_ins_enabled"]

# Whether stand-ins may run (in this thread); `textbook_only()` turns it off for a block.
stand_ins_enabled = Switch(True)


@dataclass(eq=False)
class Seam:
    """One declared seam: its name, its textbook function, its docstring's "Seam:" line (which
    stand-in may run there, and where it lives), and the stand-ins registered on it as
    (when, fast) pairs, tried in order (when None: every call)."""

    name: str
    textbook: Callable[..., Any]
    where: str
    arrays_only: bool
    stand_ins: list[tuple[Callable[..., bool] | None, Callable[..., Any]]] = field(
        default_factory=list)
    dispatch: Callable[..., Any] | None = None  # the function the seam's name refers to

    def add(self, fast: Callable[..., Any], when: Callable[..., bool] | None = None) -> None:
        """Run `fast` instead of the textbook function for the calls where `when` holds
        (when None: for every call; `fast` then hands back to the textbook where it must)."""
        if not callable(fast) or not (when is None or callable(when)):
            raise TypeError(f"{self.name}: fast must be a callable and when a callable or None, "
                            f"got {type(fast).__name__} and {type(when).__name__}")
        self.stand_ins.append((when, fast))

    def current(self) -> Callable[..., Any]:
        """The function this seam's calls go to now, in this thread: the textbook function
        when no stand-in may run, the stand-in itself when one takes every call, else the
        dispatcher (which asks each stand-in's condition call by call)."""
        if not self.stand_ins or not stand_ins_enabled.enabled:
            return self.textbook
        if len(self.stand_ins) == 1 and self.stand_ins[0][0] is None and not self.arrays_only:
            return self.stand_ins[0][1]
        return self.dispatch


SEAMS: dict[str, Seam] = {}


def seam(textbook: Callable[..., Any] | None = None, *, arrays_only: bool = True) -> Any:
    """Decorator (`@seam`, or `@seam(arrays_only=False)`): declare the function a seam.

    Its docstring must have a line "Seam: ..." saying which stand-in may run there and where
    it lives. arrays_only: stand-ins see only calls whose first argument is a numpy array
    (never a Node, whose VJP must record a graph, and never a numpy scalar).
    """
    if textbook is None:
        return functools.partial(seam, arrays_only=arrays_only)
    where = [line.strip() for line in (textbook.__doc__ or "").splitlines()
             if line.strip().startswith("Seam:")]
    if not where:
        raise ValueError(f"{textbook.__qualname__}: a seam's docstring says where its stand-ins "
                         f"live, in a line starting with 'Seam:'")
    record = Seam(textbook.__qualname__, textbook, where[0], arrays_only)
    stand_ins, switch = record.stand_ins, stand_ins_enabled

    def dispatch(*args: Any, **kwargs: Any) -> Any:
        if stand_ins and switch.enabled and (not arrays_only or type(args[0]) is np.ndarray):
            for when, fast in stand_ins:
                if when is None or when(*args, **kwargs):
                    return fast(*args, **kwargs)
        return textbook(*args, **kwargs)

    functools.update_wrapper(dispatch, textbook)
    dispatch.seam = record  # type: ignore[attr-defined]
    record.dispatch = dispatch
    key = f"{textbook.__module__}.{record.name}"
    if key in SEAMS:
        raise ValueError(f"{key}: declared as a seam twice")
    SEAMS[key] = record
    return dispatch


def textbook_only() -> AbstractContextManager[None]:
    """Context in which every seam runs its textbook function (in this thread)."""
    return stand_ins_enabled.set_to(False)
