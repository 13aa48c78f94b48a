"""A thread-local on/off switch and the context manager that sets it for one block.

Both of the core's modes are one: recording a graph (`no_grad`, `enable_grad`) and letting
the declared seams' stand-ins run (`seams.textbook_only`). Thread-local, as PyTorch's grad
mode: a block in one thread leaves the others as they were.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["Switch"]


class Switch(threading.local):
    """`enabled` (True or False, per thread), and `set_to(value)` for a `with` block."""

    def __init__(self, enabled: bool = True) -> None:
        # threading.local runs __init__ again, with the same argument, in every new thread.
        self.enabled = enabled

    @contextmanager
    def set_to(self, enabled: bool) -> Iterator[None]:
        """Inside the block the switch is `enabled`; afterwards what it was before."""
        previous = self.enabled
        self.enabled = enabled
        try:
            yield
        finally:
            self.enabled = previous
