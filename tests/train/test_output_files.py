"""Output files are written whole or not at all, and output paths are checked before long runs.

A full disk is played two ways: in-process, by making os.write fail with ENOSPC partway; for
the command line, by a child process whose file-size limit (RLIMIT_FSIZE) makes writes past
a few kilobytes fail, as a full disk does, whichever way the code writes.
"""

import errno
import os
import pathlib
import stat
import subprocess
import sys
import time

import pytest

from tinygrad_bn.train.files import check_writable, check_writable_folder, write_atomic

EXE = pathlib.Path(sys.executable).with_name("tinygrad-bn")


def _fill_the_disk_after(monkeypatch, limit):
    real_write, written = os.write, [0]

    def write(descriptor, data):
        room = limit - written[0]
        if room <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        count = real_write(descriptor, bytes(data)[:room])
        written[0] += count
        return count

    monkeypatch.setattr(os, "write", write)


def test_a_full_disk_leaves_the_previous_file_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "graph.svg"
    target.write_text("the previous picture")
    _fill_the_disk_after(monkeypatch, 100)
    with pytest.raises(OSError) as caught:
        write_atomic(target, "x" * 10_000)
    assert caught.value.errno == errno.ENOSPC
    assert target.read_text() == "the previous picture"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["graph.svg"]


def test_a_new_file_is_whole_with_the_usual_permissions(tmp_path):
    target = tmp_path / "sub" / "page.html"
    assert write_atomic(target, "é" * 100_000) == target
    assert target.read_text(encoding="utf-8") == "é" * 100_000
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
    link = tmp_path / "link.html"
    link.symlink_to(target)
    write_atomic(link, b"new")
    assert link.is_symlink() and target.read_bytes() == b"new"


def test_a_device_is_written_in_place_never_replaced():
    with pytest.raises(OSError) as caught:
        write_atomic("/dev/full", b"data")
    assert caught.value.errno == errno.ENOSPC
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)
    write_atomic("/dev/null", b"data")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_unwritable_paths_are_refused_before_any_work(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    with pytest.raises(NotADirectoryError):
        check_writable(a_file / "report.md")
    with pytest.raises(NotADirectoryError):
        check_writable_folder(a_file / "plots")
    with pytest.raises(IsADirectoryError):
        check_writable(tmp_path)
    check_writable(tmp_path / "new" / "report.md")
    check_writable_folder(tmp_path / "plots")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a_file", "new", "plots"]


LIMITED = ("import resource, signal, sys\n"
           "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
           "resource.setrlimit(resource.RLIMIT_FSIZE, ({0}, {0}))\n"
           "from {1} import main\n"
           "sys.exit(main(sys.argv[1:]))\n")
ROOT = pathlib.Path(__file__).resolve().parents[2]


def run_with_a_full_disk(args, cwd, limit=4096, module="tinygrad_bn.cli"):
    """The command line in a child whose files cannot grow past `limit` bytes."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", LIMITED.format(limit, module), *map(str, args)],
                          cwd=cwd, capture_output=True, text=True, timeout=600, env=env)


def _assert_one_line_failure(result, words):
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if words in line]
    assert lines and "File too large" in lines[0], result.stderr


def _no_partial_files(folder):
    partial = [p for p in pathlib.Path(folder).rglob("*") if p.is_file()]
    assert partial == [], partial


@pytest.mark.parametrize("out", ["graph.svg", "page.html", "graph.dot"])
def test_render_on_a_full_disk_leaves_no_file(tmp_path, out):
    result = run_with_a_full_disk(["render", "--out", tmp_path / "out" / out], tmp_path)
    _assert_one_line_failure(result, "--out: cannot write")
    _no_partial_files(tmp_path / "out")


def test_demo_on_a_full_disk_says_so_in_one_line(tmp_path):
    result = run_with_a_full_disk(["demo", "--shape", "6,3", "--out-dir", tmp_path / "g"],
                                  tmp_path)
    _assert_one_line_failure(result, "--out-dir: cannot write")
    _no_partial_files(tmp_path / "g")


def test_experiment_plot_on_a_full_disk_fails(tmp_path):
    pytest.importorskip("matplotlib")
    result = run_with_a_full_disk(["experiment", "--quick", "--plot", tmp_path / "plots"],
                                  tmp_path, limit=20_000)
    _assert_one_line_failure(result, "--plot: cannot write")
    _no_partial_files(tmp_path / "plots")


def test_bench_markdown_on_a_full_disk_fails(tmp_path):
    # The benchmarks' own entry point (what `bench` runs), at its smallest.
    result = run_with_a_full_disk(["--smoke", "--rounds", "1", "--no-torch", "--no-numba",
                                   "--markdown", tmp_path / "out" / "r.md"], tmp_path,
                                  limit=600, module="benchmarks.run")
    _assert_one_line_failure(result, "--markdown: cannot write")
    _no_partial_files(tmp_path / "out")


@pytest.mark.parametrize("args, words", [
    (["experiment", "--plot", "{file}/plots"], "--plot: cannot write to {file}/plots"),
    (["bench", "--markdown", "{file}/report.md"], "--markdown: cannot write {file}/report.md"),
    (["render", "--out", "{file}/graph.svg"], "--out: cannot write {file}/graph.svg"),
])
def test_unwritable_outputs_fail_at_once(tmp_path, args, words):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    start = time.perf_counter()
    result = subprocess.run([str(EXE), *(a.format(file=a_file) for a in args)], cwd=tmp_path,
                            capture_output=True, text=True, timeout=600)
    elapsed = time.perf_counter() - start
    assert result.returncode in (1, 2), result.stderr
    assert words.format(file=a_file) in result.stderr and "Not a directory" in result.stderr
    assert "Traceback" not in result.stderr
    assert elapsed < 20, "refused only after the run"  # the full run takes minutes
