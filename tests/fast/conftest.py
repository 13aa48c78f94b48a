"""The fast layer's tests: each fused-norm test runs on both backends; the benchmarks'
extended-precision reference (benchmarks/exactness.py) is importable from the repository root."""

import pathlib
import sys

import pytest

from tinygrad_bn import fast

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))


@pytest.fixture(params=["numpy", "numba"])
def backend(request):
    """Each norm test runs on the numpy block passes and on the numba-compiled ones."""
    if request.param == "numba":
        pytest.importorskip("numba")
    previous = fast.numba_enabled()
    fast.use_numba(request.param == "numba")
    yield request.param
    fast.use_numba(previous)


@pytest.fixture
def compiled():
    """The numba-compiled passes alone (for tests of the compiled kernels themselves)."""
    pytest.importorskip("numba")
    previous = fast.numba_enabled()
    fast.use_numba(True)
    yield
    fast.use_numba(previous)


@pytest.fixture
def on_thread_counts():
    """results(case, counts): `run_case(case, together=True)` on each thread count in turn
    (the thread count set back to 2 afterwards), for tests that results do not depend on it."""
    from benchmarks.exactness import run_case
    from tinygrad_bn.fast import kernels

    def results(case, counts):
        found = []
        for threads in counts:
            kernels.set_num_threads(threads)
            try:
                found.append(run_case(case, together=True))
            finally:
                kernels.set_num_threads(2)
        return found

    return results
