"""A smoke run of the benchmark suite on tiny sizes: it runs and its tables have their shape."""

import re

from tinygrad_bn.cli import main as cli_main


def test_bench_smoke_prints_every_table(capsys, tmp_path):
    report = tmp_path / "results.md"
    assert cli_main(["bench", "--smoke", "--markdown", str(report)]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| case | engine fused"))
    columns = [c.strip() for c in lines[start].strip("|").split("|")]
    assert columns[:5] == ["case", "engine fused", "engine staged", "numpy formulas", "numpy staged"]
    end = lines.index("", start)
    timing_rows = lines[start + 2:end]
    assert len(timing_rows) == 3 and all(re.match(r"\| \d+x\d+", r) for r in timing_rows)
    for row in timing_rows:
        cells = [c.strip() for c in row.strip("|").split("|")][1:]
        assert all(float(c) > 0 for c in cells if c != "n/a")
    assert re.search(r"\| chain \| [\d.]+ \| [\d.]+ \|", text)
    assert re.search(r"\| wide \| [\d.]+ \| [\d.]+ \|", text)
    for variant in ("fused", "staged", "staged, backward(free_graph=True)"):
        assert re.search(rf"\| {re.escape(variant)} \| [\d.]+ \|", text)
    assert "GB/s on one core" in text and "What is measured:" in text and "Machine:" in text
    # It speaks to a user: no pass/fail judgements of internal targets.
    assert "MISSED" not in text and "target" not in text.lower()
    written = report.read_text()
    assert written.startswith("# Benchmark results") and "Machine:" in written
    assert "MISSED" not in written and "target" not in written.lower()
