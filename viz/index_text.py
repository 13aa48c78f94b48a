"""How an index, a padding or a window is written in a line of numpy (the labels and the
stepper's code lines for indexing, pad, concatenate and the sliding windows)."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["index_text", "slices_text", "pad_slices", "concat_slices"]

SHOWN_INDICES = 6  # an index array longer than this is shown by its shape


def _item_text(item: Any) -> str:
    if item is None:
        return "None"
    if item is Ellipsis:
        return "..."
    if isinstance(item, slice):
        start = "" if item.start is None else str(item.start)
        stop = "" if item.stop is None else str(item.stop)
        return f"{start}:{stop}" + ("" if item.step is None else f":{item.step}")
    if isinstance(item, np.ndarray):
        if item.dtype.kind in "iu" and item.ndim == 1 and np.array_equal(item, np.arange(item.size)):
            return f"np.arange({item.size})"
        if item.size <= SHOWN_INDICES:
            return f"np.array({item.tolist()})"
        kind = "mask" if item.dtype.kind == "b" else "index"
        return f"<{kind} of shape {item.shape}>"
    return str(item)


def index_text(index: tuple[Any, ...]) -> str:
    """(np.arange(3), array([0, 2, 1])) -> "[np.arange(3), np.array([0, 2, 1])]"."""
    return "[" + ", ".join(_item_text(item) for item in index) + "]"


def slices_text(slices: tuple[slice, ...]) -> str:
    """The slices of a padding or a concatenation, trailing full slices left out."""
    items = list(slices)
    while items and items[-1] == slice(None):
        items.pop()
    return index_text(tuple(items)) if items else "[...]"


def pad_slices(pad_width: tuple[tuple[int, int], ...], shape: tuple[int, ...]) -> tuple[slice, ...]:
    """The middle of a padded array: what the unpadded input was."""
    return tuple(slice(None) if before == after == 0 else slice(before, before + size)
                 for (before, after), size in zip(pad_width, shape))


def concat_slices(axis: int, shapes: list[tuple[int, ...]], i: int) -> tuple[slice, ...]:
    """Input i's slice of a concatenation along `axis`."""
    start = sum(shape[axis] for shape in shapes[:i])
    return (slice(None),) * axis + (slice(start, start + shapes[i][axis]),)
