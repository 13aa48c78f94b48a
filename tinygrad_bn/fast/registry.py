"""How a fast variant takes the place of a core function without the core knowing.

`fast_variant(owner, attribute, when)` replaces `owner.attribute` (an op's forward or
backward, or any function a core class or module exposes) by a dispatcher: the fast
variant runs where its first argument is a numpy array (never on Nodes or numpy scalars)
and `when(*args)` says it pays, the textbook function everywhere else.
Every installed variant is listed in VARIANTS with both functions, which is what the
equivalence tests run against each other; `disabled()` runs the textbook core alone.
"""

from __future__ import annotations

import functools
import inspect
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Variant", "VARIANTS", "fast_variant", "disabled", "is_enabled"]


@dataclass(frozen=True)
class Variant:
    """One installed fast variant: where it sits, the function it stands in for, and when."""

    owner: Any
    attribute: str
    textbook: Callable[..., Any]
    fast: Callable[..., Any]
    when: Callable[..., bool]

    @property
    def name(self) -> str:
        return f"{getattr(self.owner, '__name__', self.owner)}.{self.attribute}"


VARIANTS: list[Variant] = []


class _Switch(threading.local):
    enabled = True


_switch = _Switch()


def is_enabled() -> bool:
    """Whether fast variants run (in this thread)."""
    return _switch.enabled


@contextmanager
def disabled() -> Iterator[None]:
    """Run the textbook core alone inside this block (in this thread)."""
    previous = _switch.enabled
    _switch.enabled = False
    try:
        yield
    finally:
        _switch.enabled = previous


def fast_variant(owner: Any, attribute: str, when: Callable[..., bool], arrays_only: bool = True
                 ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: install the decorated function as `owner.attribute` where `when` holds
    (and, unless arrays_only=False, where the first argument is a numpy array)."""

    def install(fast: Callable[..., Any]) -> Callable[..., Any]:
        current = inspect.getattr_static(owner, attribute)
        is_static = isinstance(current, staticmethod)
        textbook = current.__func__ if is_static else current

        if arrays_only:
            @functools.wraps(textbook)
            def dispatch(*args: Any, **kwargs: Any) -> Any:
                if type(args[0]) is np.ndarray and _switch.enabled and when(*args, **kwargs):
                    return fast(*args, **kwargs)
                return textbook(*args, **kwargs)
        else:
            @functools.wraps(textbook)
            def dispatch(*args: Any, **kwargs: Any) -> Any:
                if _switch.enabled and when(*args, **kwargs):
                    return fast(*args, **kwargs)
                return textbook(*args, **kwargs)

        setattr(owner, attribute, staticmethod(dispatch) if is_static else dispatch)
        VARIANTS.append(Variant(owner, attribute, textbook, fast, when))
        return fast

    return install
