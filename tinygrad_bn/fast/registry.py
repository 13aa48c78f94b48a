"""How a fast variant stands in for a core function: only at the seams the core declares.

The core marks the few functions a faster variant may stand in for with `@seam`
(`core/seams.py`; each says so in its docstring). `fast_variant(owner, attribute, when)`
adds the decorated function to the table of the seam `owner.attribute`; the seam runs it
for the calls where `when(*args)` holds (for most seams: only where the first argument is
a numpy array, never on Nodes), the textbook function everywhere else. Anything that is
not a declared seam is refused, and nothing is replaced in place.
Every installed variant is listed in VARIANTS with both functions, which is what the
equivalence tests run against each other; `disabled()` runs the textbook core alone.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from ..core.seams import SEAMS, Seam, stand_ins_enabled, textbook_only

__all__ = ["Variant", "VARIANTS", "fast_variant", "disabled", "is_enabled"]


@dataclass(frozen=True)
class Variant:
    """One installed fast variant: where it sits, the function it stands in for, and when."""

    owner: Any
    attribute: str
    textbook: Callable[..., Any]
    fast: Callable[..., Any]
    when: Callable[..., bool] | None  # None: every call (the variant hands back itself)

    @property
    def name(self) -> str:
        return f"{getattr(self.owner, '__name__', self.owner)}.{self.attribute}"


VARIANTS: list[Variant] = []


def is_enabled() -> bool:
    """Whether fast variants run (in this thread)."""
    return stand_ins_enabled.enabled


def disabled() -> AbstractContextManager[None]:
    """Run the textbook core alone inside this block (in this thread)."""
    return textbook_only()


def declared_seam(owner: Any, attribute: str) -> Seam:
    """The seam `owner.attribute`, or a TypeError naming it when the core declares none there."""
    try:
        current = inspect.getattr_static(owner, attribute)
    except AttributeError:
        current = None
    function = current.__func__ if isinstance(current, staticmethod) else current
    record = getattr(function, "seam", None)
    if not isinstance(record, Seam):
        name = f"{getattr(owner, '__name__', owner)}.{attribute}"
        raise TypeError(f"{name}: not a seam the core declares; a fast variant may stand in only "
                        f"for one of {', '.join(sorted(s.name for s in SEAMS.values()))}")
    return record


def fast_variant(owner: Any, attribute: str, when: Callable[..., bool] | None = None
                 ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: let the decorated function stand in for the seam `owner.attribute` where
    `when` holds (same arguments as the textbook function; None: on every call, the variant
    itself calling the textbook function where it does not apply). Returns the function
    unchanged."""
    record = declared_seam(owner, attribute)

    def install(fast: Callable[..., Any]) -> Callable[..., Any]:
        record.add(fast, when)
        VARIANTS.append(Variant(owner, attribute, record.textbook, fast, when))
        return fast

    return install
