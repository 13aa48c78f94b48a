"""A written page that shows itself in Jupyter: the path it was written to, displayed as the
page in a frame as wide as the notebook's column."""

from __future__ import annotations

import html
import pathlib

__all__ = ["ShownPage"]


class ShownPage(type(pathlib.Path())):  # type: ignore[misc]
    """A `pathlib.Path` (where the page was written) whose `_repr_html_` is the page itself,
    in a sandboxed frame (scripts run inside it only) fitted to the notebook's column."""

    def _repr_html_(self) -> str:
        page = self.read_text(encoding="utf-8")
        return (f"<iframe sandbox='allow-scripts' srcdoc=\"{html.escape(page, quote=True)}\" "
                f"style='width:100%;height:640px;border:1px solid #d0d7de'></iframe>")
