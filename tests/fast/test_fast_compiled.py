"""The compiled passes' disk cache (`fast/compile_cache.py`): private, and never an error.

Every test runs in a child process with its own cache folder (NUMBA_CACHE_DIR or TMPDIR
under a temporary directory), so that no other cache is read or changed.
"""

import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("numba")

ROOT = pathlib.Path(__file__).resolve().parents[2]

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

# The same through the small passes alone (quicker to compile), and the folder in use.
SMALL = """
import numpy as np, tinygrad_bn as tb
from tinygrad_bn.fast import compile_cache
x = tb.Node(np.random.default_rng(0).standard_normal((64, 128)))
out = tb.layernorm_fused(x, np.ones(128), np.zeros(128))
out.backward(np.ones((64, 128)))
print("compiled:", tb.fast.numba_enabled(), float(np.abs(x.grad).sum()) < 1e-9)
print("folder:", compile_cache.cache_folder())
"""

# Where the package's own folder is refused (as a read-only or shared install's would be):
# the temporary folder is the one left.
NO_PACKAGE_FOLDER = """
from tinygrad_bn.fast import compile_cache
compile_cache._in_tree = lambda: "/nonexistent/__pycache__"
"""


def run_python(code: str, env: dict) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "TMPDIR")}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=600, env={**base, "PYTHONPATH": str(ROOT), **env})


def cache_files(folder: pathlib.Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*")
            if p.suffix in (".nbi", ".nbc")}


def temp_folder(tmp: pathlib.Path) -> pathlib.Path:
    return tmp / f"tinygrad_bn-numba-{os.getuid()}"


def test_compiled_passes_are_cached_and_survive_truncated_cache_files(tmp_path):
    folder = tmp_path / "cache"
    env = {"NUMBA_CACHE_DIR": str(folder)}
    first = run_python(LAYER_NORM, env)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "compiled: True True" in first.stdout  # gamma = 1, dout = 1: dx is exactly zero
    cached = cache_files(folder)
    assert any("numba_kernels.row_forward" in name for name in cached), list(cached)
    assert any("numba_small._row_forward" in name for name in cached), list(cached)
    second = run_python(LAYER_NORM, env)
    assert second.returncode == 0 and "compiled: True True" in second.stdout
    assert cache_files(folder) == cached  # loaded, not compiled again
    for name, data in cached.items():  # every index and data file cut in half
        (folder / name).write_bytes(data[: len(data) // 2])
    third = run_python(SMALL, env)  # the small passes alone: quicker to compile again
    assert third.returncode == 0, third.stderr[-2000:]
    assert "compiled: True True" in third.stdout
    repaired = cache_files(folder)  # the damaged entries it used were written anew
    small = [name for name in repaired if "numba_small._row_backward" in name]
    assert small and all(repaired[name] != cached[name][: len(cached[name]) // 2]
                         for name in small)
    fourth = run_python(SMALL, env)
    assert fourth.returncode == 0 and "compiled: True True" in fourth.stdout
    assert cache_files(folder) == repaired  # loaded, not compiled again


def _plant(tmp_path: pathlib.Path, how: str) -> pathlib.Path:
    planted = temp_folder(tmp_path)
    if how == "file":
        planted.write_text("not a folder")
        return planted
    if how == "symlink":
        target = tmp_path / "elsewhere"
        target.mkdir(mode=0o700)
        planted.symlink_to(target)
        return target
    planted.mkdir(mode=0o700)
    if how == "shared":
        planted.chmod(0o777)
    elif how == "unwritable":
        planted.chmod(0o500)
    elif how == "other owner":
        os.chown(planted, 65534, 65534)
    return planted


# A function of the caller's own through the cache (quicker to compile than the passes).
TINY = """
import pathlib, sys, tempfile
source = pathlib.Path(tempfile.mkdtemp()) / "tiny_module.py"
source.write_text("from tinygrad_bn.fast.compile_cache import cached_njit\\n"
                  "@cached_njit()\\ndef twice(v):\\n    return 2 * v\\n")
sys.path.insert(0, str(source.parent))
import tiny_module
print("compiled:", tiny_module.twice(2) == 4, True)
print("folder:", compile_cache.cache_folder())
"""


@pytest.mark.parametrize("how", ["other owner", "shared", "symlink", "file", "unwritable"])
def test_a_planted_temporary_folder_is_never_used(tmp_path, how):
    # Another local user can create $TMPDIR/tinygrad_bn-numba-<uid> before us; cache files
    # are pickles numba loads: a folder anyone else could write is never read or written.
    if how == "other owner" and os.geteuid() != 0:
        pytest.skip("making a folder of another owner needs root")
    if how == "unwritable" and os.geteuid() == 0:
        pytest.skip("permissions do not stop root's writes")
    planted = _plant(tmp_path, how)
    before = sorted(p.name for p in planted.rglob("*")) if planted.is_dir() else None
    # The normalizations themselves once (compiled in memory: slower), else a small function.
    script = SMALL if how == "other owner" else TINY
    result = run_python(NO_PACKAGE_FOLDER + script, {"TMPDIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "compiled: True True" in result.stdout
    assert "folder: None" in result.stdout  # compiled in memory
    if before is not None:
        assert sorted(p.name for p in planted.rglob("*")) == before
    if how == "unwritable":
        planted.chmod(0o700)  # so that the temporary directory can be removed


def test_the_temporary_folder_is_created_private(tmp_path):
    result = run_python(NO_PACKAGE_FOLDER + TINY, {"TMPDIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "compiled: True True" in result.stdout
    folder = temp_folder(tmp_path)
    assert (folder.stat().st_mode & 0o777) == 0o700 and folder.stat().st_uid == os.getuid()
    assert f"folder: {folder}{os.sep}" in result.stdout
    assert cache_files(folder)


def test_importing_and_running_changes_nothing_of_numbas(tmp_path):
    # A user's own cached function keeps numba's own folder (beside its source), and
    # numba's configuration is untouched.
    module = tmp_path / "users_module.py"
    module.write_text(textwrap.dedent("""
        import numba

        @numba.njit(cache=True)
        def twice(v):
            return 2 * v
    """))
    code = f"""
import sys, numba
sys.path.insert(0, {str(tmp_path)!r})
before = (numba.config.CACHE_DIR, numba.config.CACHE_LOCATOR_CLASSES)
""" + SMALL + """
import users_module
assert users_module.twice(2) == 4
print("config kept:", (numba.config.CACHE_DIR, numba.config.CACHE_LOCATOR_CLASSES) == before)
print("user cache:", users_module.twice._cache.cache_path)
"""
    result = run_python(code, {"TMPDIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "config kept: True" in result.stdout
    assert f"user cache: {tmp_path / '__pycache__'}" in result.stdout


def test_a_cache_folder_is_private_only_when_no_one_else_can_write_it(tmp_path):
    from tinygrad_bn.fast.compile_cache import is_private_folder

    own = tmp_path / "own"
    own.mkdir(mode=0o700)
    assert is_private_folder(str(own))
    own.chmod(0o775)
    assert not is_private_folder(str(own))
    own.chmod(0o700)
    link = tmp_path / "link"
    link.symlink_to(own)
    assert not is_private_folder(str(link))
    shared_parent = tmp_path / "shared"
    shared_parent.mkdir()
    shared_parent.chmod(0o777)
    inside = shared_parent / "inside"
    inside.mkdir(mode=0o700)
    assert not is_private_folder(str(inside))  # anyone could rename it and plant another
    shared_parent.chmod(0o1777)  # sticky, as /tmp: only its owner may rename an entry
    assert is_private_folder(str(inside))
    shutil.rmtree(shared_parent)
