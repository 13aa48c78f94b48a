"""The core's own tests run twice: with the fast layer's variants, and with the textbook alone.

The fast layer may stand in only at the seams the core declares, and must compute what the
core computes: so every test of the core must pass both ways.
"""

from __future__ import annotations

import pytest

import tinygrad_bn as tb


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # This folder holds the core layer's tests (Node, the backward pass, the ops, their VJPs).
    if metafunc.module is not None:
        metafunc.fixturenames.append("engine_path")
        # Module scope: one switch per module and path (and no function-scoped fixture
        # under hypothesis).
        metafunc.parametrize("engine_path", ["with_fast_layer", "textbook_only"], indirect=True,
                             scope="module")


@pytest.fixture(scope="module")
def engine_path(request: pytest.FixtureRequest):
    """Runs the test with the fast variants, or inside `tb.fast.disabled()`."""
    if request.param == "textbook_only":
        with tb.fast.disabled():
            yield request.param
    else:
        assert tb.fast.is_enabled()
        yield request.param
