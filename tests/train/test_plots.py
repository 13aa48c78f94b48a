"""The experiment's plots (matplotlib), and the experiment without matplotlib."""

import subprocess
import sys
import xml.etree.ElementTree as ET

from tinygrad_bn.cli import main as cli_main


def test_experiment_plots(tmp_path, capsys):
    assert cli_main(["experiment", "--quick", "--plot", str(tmp_path)]) == 0
    assert "plots: " in capsys.readouterr().out
    for stem in ("init_statistics", "training_loss"):
        assert (tmp_path / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        svg = ET.parse(tmp_path / f"{stem}.svg").getroot()
        assert svg.tag.endswith("svg")
        # matplotlib draws lines, ticks and glyphs as paths: these plots have about a hundred
        # or more, an empty figure one.
        assert sum(1 for e in svg.iter() if e.tag.endswith("path")) > 50
        # matplotlib writes each text as a comment before its glyphs: one panel per
        # normalization, a legend beside them (outside every panel).
        words = (tmp_path / f"{stem}.svg").read_text()
        for variant in ("none", "batch", "layer"):
            assert words.count(f"<!-- normalization: {variant} -->") == 1, (stem, variant)
        assert "<!-- curves -->" in words
        axes = [g for g in svg.iter() if (g.get("id") or "").startswith("axes_")]
        assert len(axes) == (6 if stem == "init_statistics" else 3)
        # The whole figure, legend included, fits a 900 px window.
        png = (tmp_path / f"{stem}.png").read_bytes()
        assert int.from_bytes(png[16:20], "big") <= 900
        assert float(svg.get("width").removesuffix("pt")) * 4 / 3 <= 900
    # The quick experiment's unnormalized run at init scale 1 diverges: marked, with where.
    assert "<!-- diverged at step " in (tmp_path / "training_loss.svg").read_text()


def test_experiment_without_matplotlib_says_how_to_get_the_plots(tmp_path):
    code = ("import sys; sys.modules['matplotlib'] = None\n"
            "from tinygrad_bn.cli import main\n"
            f"raise SystemExit(main(['experiment', '--quick', '--plot', {str(tmp_path)!r}]))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Final training loss" in result.stdout
    assert "no plots drawn: the plots need matplotlib: pip install" in result.stdout
    assert not list(tmp_path.iterdir())
