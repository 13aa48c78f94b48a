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

from tinygrad_bn.files import check_writable, check_writable_folder, prepare_folder, write_atomic

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
    target = tmp_path / "page.html"
    assert write_atomic(target, "é" * 100_000) == target
    assert target.read_text(encoding="utf-8") == "é" * 100_000
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
    link = tmp_path / "link.html"
    link.symlink_to(target)
    write_atomic(link, b"new")
    assert link.is_symlink() and target.read_bytes() == b"new"


def test_a_device_a_pipe_or_a_folder_is_refused_never_replaced(tmp_path):
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    (tmp_path / "folder").mkdir()
    (tmp_path / "link-to-pipe").symlink_to(pipe)
    for target, words in (("/dev/null", "a character device, not a regular file"),
                          (pipe, "a named pipe, not a regular file"),
                          (tmp_path / "link-to-pipe", "a named pipe, not a regular file"),
                          (tmp_path / "folder", "a folder, not a regular file")):
        with pytest.raises(OSError, match=words):
            write_atomic(target, b"data")
        with pytest.raises(OSError, match=words):
            check_writable(target)
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode) and stat.S_ISFIFO(os.stat(pipe).st_mode)
    assert (tmp_path / "folder").is_dir() and (tmp_path / "link-to-pipe").is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "link-to-pipe", "pipe"]


def test_a_missing_folder_is_an_error_never_made(tmp_path):
    for attempt in (lambda: write_atomic(tmp_path / "new" / "page.html", "x"),
                    lambda: check_writable(tmp_path / "new" / "report.md"),
                    lambda: check_writable_folder(tmp_path / "new")):
        with pytest.raises(FileNotFoundError, match="no folder .*new"):
            attempt()
    assert list(tmp_path.iterdir()) == []
    # The one folder a command is told to fill is made, inside a folder that exists.
    assert prepare_folder(tmp_path / "plots") and not prepare_folder(tmp_path / "plots")
    with pytest.raises(FileNotFoundError, match="its folder .*deeper does not exist"):
        prepare_folder(tmp_path / "deeper" / "plots")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plots"]


def test_unwritable_paths_are_refused_before_any_work(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    with pytest.raises(NotADirectoryError):
        check_writable(a_file / "report.md")
    with pytest.raises(NotADirectoryError):
        check_writable_folder(a_file)
    with pytest.raises(NotADirectoryError):
        prepare_folder(a_file / "plots")
    with pytest.raises(IsADirectoryError):
        check_writable(tmp_path)
    (tmp_path / "new").mkdir()
    check_writable(tmp_path / "new" / "report.md")
    check_writable_folder(tmp_path / "new")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a_file", "new"]


def test_a_temporary_name_planted_as_a_link_is_never_followed(tmp_path, monkeypatch):
    import secrets

    victim = tmp_path / "victim.txt"
    victim.write_text("someone else's file")
    names = iter(["0" * 16, "1" * 16])
    monkeypatch.setattr(secrets, "token_hex", lambda size: next(names))
    (tmp_path / f".page.html.{'0' * 16}.tmp").symlink_to(victim)  # the first name tried
    write_atomic(tmp_path / "page.html", "the page")
    assert victim.read_text() == "someone else's file"
    assert (tmp_path / "page.html").read_text() == "the page"


def test_a_read_only_file_is_refused_and_a_replaced_file_keeps_its_mode(tmp_path, monkeypatch):
    target = tmp_path / "page.html"
    target.write_text("old")
    target.chmod(0o640)
    write_atomic(target, "new")
    assert target.read_text() == "new" and stat.S_IMODE(target.stat().st_mode) == 0o640
    target.chmod(0o440)
    real_access = os.access
    # As the system answers for an ordinary user (a superuser may write any file).
    monkeypatch.setattr(os, "access", lambda path, mode, **kwargs: False if mode == os.W_OK
                        else real_access(path, mode, **kwargs))
    with pytest.raises(PermissionError, match="read-only"):
        write_atomic(target, "newer")
    with pytest.raises(PermissionError, match="read-only"):
        check_writable(target)
    assert target.read_text() == "new" and sorted(tmp_path.iterdir()) == [target]


def test_a_long_name_fits_its_temporary_and_a_too_long_one_says_so(tmp_path):
    fits = tmp_path / ("é" * 120 + ".svg")  # 244 bytes: the temporary name is cut to fit
    write_atomic(fits, "x")
    assert fits.read_text() == "x" and sorted(tmp_path.iterdir()) == [fits]
    with pytest.raises(OSError, match=r"file name too long \(404 bytes; at most 255\)"):
        check_writable(tmp_path / ("é" * 200 + ".svg"))


LIMITED = ("import resource, signal, sys\n"
           "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
           "resource.setrlimit(resource.RLIMIT_FSIZE, ({0}, {0}))\n"
           "from {1} import main\n"
           "sys.exit(main(sys.argv[1:]))\n")
ROOT = pathlib.Path(__file__).resolve().parents[1]


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
    (tmp_path / "out").mkdir()
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
    (tmp_path / "out").mkdir()
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


# --- check's own outputs: the saved case and the report page ---------------------------
WRONG_DVAR = ROOT / "tests" / "students" / "wrong_dvar.py"
CHECK = ["check", WRONG_DVAR, "--only", "batchnorm_backward"]


def run_cli(args, cwd):
    return subprocess.run([str(EXE), *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


def test_save_case_on_a_full_disk_leaves_no_file(tmp_path):
    (tmp_path / "out").mkdir()
    # The check's own replies (a few kB) fit; the case (about 14 kB) does not.
    result = run_with_a_full_disk([*CHECK, "--save-case", tmp_path / "out" / "case.npz"],
                                  tmp_path, limit=10_000)
    _assert_one_line_failure(result, "--save-case: cannot write")
    _no_partial_files(tmp_path / "out")


def test_the_html_page_on_a_full_disk_leaves_no_file(tmp_path):
    (tmp_path / "out").mkdir()
    result = run_with_a_full_disk([*CHECK, "--html", tmp_path / "out" / "report.html"],
                                  tmp_path, limit=20_000)
    _assert_one_line_failure(result, "--html: cannot write")
    _no_partial_files(tmp_path / "out")


@pytest.mark.parametrize("option", ["--save-case", "--html"])
def test_check_outputs_are_refused_before_the_check(tmp_path, option):
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    for target, words in ((tmp_path / "missing" / "out", "no folder"),
                          (pipe, "a named pipe, not a regular file"),
                          (tmp_path / ("é" * 200), "file name too long")):
        result = run_cli([*CHECK, option, target], tmp_path)
        assert result.returncode == 1, result.stderr
        assert "Traceback" not in result.stderr and "functions pass" not in result.stdout
        assert result.stderr.count("\n") == 1 and f"{option}: cannot write" in result.stderr
        assert words in result.stderr
    assert stat.S_ISFIFO(os.stat(pipe).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]


def test_the_case_and_the_page_need_files_of_their_own(tmp_path):
    result = run_cli([*CHECK, "--save-case", "out", "--html", "./out"], tmp_path)
    assert result.returncode == 2 and "functions pass" not in result.stdout
    assert "--html: the same file as --save-case (out)" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_check_writes_exactly_the_paths_given_and_through_links(tmp_path):
    (tmp_path / "pages").mkdir()
    real_page = tmp_path / "pages" / "real.html"
    real_page.write_text("an older page")
    (tmp_path / "report.html").symlink_to(real_page)
    victim = tmp_path / "victim.txt"
    victim.write_text("someone else's file")
    (tmp_path / ".report.html.partial").symlink_to(victim)  # a name once used as temporary
    result = run_cli([*CHECK, "--save-case", "adir", "--html", "report.html"], tmp_path)
    assert result.returncode == 1 and "saved the case of batchnorm_backward to adir" in result.stdout
    assert (tmp_path / "adir").is_file() and not (tmp_path / "adir.npz").exists()
    assert run_cli(["explain", "--load", "adir"], tmp_path).returncode == 0
    assert (tmp_path / "report.html").is_symlink()
    assert real_page.read_text().startswith("<!DOCTYPE html>")
    assert victim.read_text() == "someone else's file"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".report.html.partial", "adir", "pages", "report.html", "victim.txt"]
