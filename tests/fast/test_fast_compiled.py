"""The compiled passes: cached on disk, and still usable where no cache folder is writable."""

import os
import pathlib
import subprocess
import sys

import pytest

pytest.importorskip("numba")

# 64 x 128 takes the small serial passes (numba_small.py), 1024 x 128 the parallel ones.
LAYER_NORM = """
import numpy as np, tinygrad_bn as tb
zero = []
for rows in (64, 1024):
    x = tb.Node(np.random.default_rng(0).standard_normal((rows, 128)))
    out = tb.layernorm_fused(x, np.ones(128), np.zeros(128))
    out.backward(np.ones((rows, 128)))
    zero.append(float(np.abs(x.grad).sum()) < 1e-9)
print("compiled:", tb.fast.numba_enabled(), all(zero))
"""


@pytest.fixture(scope="module")
def temp_root(tmp_path_factory):
    """A temporary directory; its per-user numba folder is the fallback cache's name."""
    return tmp_path_factory.mktemp("compiled")


def fallback_folder(root: pathlib.Path) -> pathlib.Path:
    return root / (f"tinygrad_bn-numba-{os.getuid()}" if hasattr(os, "getuid")
                   else "tinygrad_bn-numba")


def run_python(code: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, env={**os.environ, **env})


def test_compiled_passes_are_cached_on_disk(temp_root):
    tmp_path = fallback_folder(temp_root)  # shared with the next test: it loads, not compiles
    first = run_python(LAYER_NORM, {"NUMBA_CACHE_DIR": str(tmp_path)})
    assert first.returncode == 0, first.stderr[-2000:]
    assert "compiled: True True" in first.stdout  # gamma = 1, dout = 1: dx is exactly zero
    cached = {p.name for p in pathlib.Path(tmp_path).rglob("*") if p.suffix in (".nbi", ".nbc")}
    assert any(name.startswith("numba_kernels.row_forward") for name in cached), cached
    assert any(name.startswith("numba_small._row_forward") for name in cached), cached
    second = run_python(LAYER_NORM, {"NUMBA_CACHE_DIR": str(tmp_path)})
    assert second.returncode == 0 and "compiled: True True" in second.stdout
    after = {p.name for p in pathlib.Path(tmp_path).rglob("*") if p.suffix in (".nbi", ".nbc")}
    assert after == cached  # loaded, not compiled again


def test_without_a_writable_cache_folder_the_passes_still_compile(temp_root):
    code = f"""
import numba, tempfile
real_njit = numba.njit
def njit(*args, **options):  # as where neither the package folder nor a user folder is writable
    if options.get("cache") and numba.config.CACHE_DIR in ("", None):
        def refuse(fn):
            raise RuntimeError("cannot cache function: no locator available")
        return refuse
    return real_njit(*args, **options)
numba.njit = njit
tempfile.tempdir = {str(temp_root)!r}
""" + LAYER_NORM
    result = run_python(code, {"NUMBA_CACHE_DIR": ""})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "compiled: True True" in result.stdout
    assert any(fallback_folder(temp_root).rglob("*.nbi"))
