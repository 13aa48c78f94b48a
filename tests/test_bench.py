"""A smoke run of the benchmark suite on tiny sizes: it runs and its tables have their shape;
and the judgement of a peer's times (flagged, not headlined, when implausible or unstable)."""

import re

from benchmarks.run import Case, flag
from tinygrad_bn.cli import main as cli_main

SPREAD = r"[\d.e+-]+ / [\d.e+-]+ / [\d.e+-]+"


def test_bench_smoke_prints_every_table(capsys, tmp_path):
    report = tmp_path / "results.md"
    assert cli_main(["bench", "--smoke", "--markdown", str(report)]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| case | engine fused"))
    columns = [c.strip() for c in lines[start].strip("|").split("|")]
    assert columns[0] == "case" and columns[1] == "engine fused (numpy)"
    assert {"engine staged", "numpy formulas", "numpy staged"} <= set(columns)
    end = lines.index("", start)
    timing_rows = lines[start + 2:end]
    kinds = [re.match(r"\| (batch|spatial|layer|group) \d+x\d+", r) for r in timing_rows]
    assert len(timing_rows) == 5 and all(kinds)
    assert {m.group(1) for m in kinds} == {"batch", "spatial", "layer", "group"}
    for row in timing_rows:
        cells = [c.strip().removesuffix(" (!)") for c in row.strip("|").split("|")][1:]
        for cell in cells:
            if cell != "n/a":
                low, median, high = map(float, cell.split(" / "))
                assert 0 < low <= median <= high
    assert re.search(rf"\| chain \| {SPREAD} \| {SPREAD} \|", text)
    assert re.search(rf"\| wide \| {SPREAD} \| {SPREAD} \|", text)
    for variant in ("fused", "staged", "staged, backward(free_graph=True)"):
        assert re.search(rf"\| {re.escape(variant)} \| [\d.]+ \|", text)
    assert "GB/s on one core" in text and "What is measured:" in text and "Machine:" in text
    assert "% of copy bandwidth" in text
    # It speaks to a user: no pass/fail judgements of internal targets.
    assert "MISSED" not in text and "target" not in text.lower()
    written = report.read_text()
    assert written.startswith("# Benchmark results") and "Machine:" in written
    assert "MISSED" not in written and "target" not in written.lower()


def test_a_peer_with_implausible_or_unstable_times_is_flagged():
    small, large = Case("batch", (64, 256), "float64"), Case("batch", (1024, 1024), "float64")
    numpy_peers = {"numpy_formulas": [9e-5, 1e-4], "numpy_staged": [9e-5, 1e-4]}
    # The same 72 ms for 64x256 and 1024x1024 on a busy machine: far slower than numpy.
    busy = {**numpy_peers, "torch": [0.072, 0.072, 0.073]}
    assert "implausible" in flag(small, "torch", busy, stream_gbps=40.0)
    # Faster than the memory traffic allows.
    assert "implausible" in flag(large, "torch", {"torch": [1e-5] * 3}, stream_gbps=40.0)
    # Repetitions that spread over 5x, the median far above the minimum.
    unstable = {**numpy_peers, "torch": [4e-5, 2e-4, 2.1e-4, 2.2e-4]}
    assert "unstable" in flag(small, "torch", unstable, stream_gbps=40.0)
    steady = {**numpy_peers, "torch": [4e-5, 4.2e-5, 4.1e-5, 9e-5]}
    assert flag(small, "torch", steady, stream_gbps=40.0) is None


def test_an_implausible_peer_is_never_divided_into_a_speed_up():
    from benchmarks.run import _versus

    case = Case("layer", (64, 256), "float32")
    by_impl = {"engine_fused": [1.5e-4], "torch": [0.02]}
    flags = {(case, "torch"): "implausible: over 20x the slowest numpy peer"}
    assert _versus(case, by_impl, "engine_fused", "torch", flags) == "n/a (!)"
    flags = {(case, "torch"): "unstable: median 3.0x its minimum"}
    assert _versus(case, by_impl, "engine_fused", "torch", flags) == "133.33x (!)"
    assert _versus(case, by_impl, "engine_fused", "torch", {}) == "133.33x"


def test_the_scalar_ratio_is_a_speed_up_like_the_others():
    from benchmarks.run import scalar_row
    row = scalar_row("chain", {"engine": [2.0, 3.0], "closure": [8.0, 9.0]})
    assert row.endswith("| 4.00x |")  # closure 4x slower: the engine is 4x faster
