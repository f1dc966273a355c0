"""What a run shows while it works: plain progress lines off a terminal, a quiet console."""

import os
import re
import subprocess
import sys

import pytest

from cgi2real.runtime import progress as progress_module
from cgi2real.runtime.progress import Progress


def test_plain_lines_count_rate_and_end_once(monkeypatch, capsys):
    monkeypatch.setattr(progress_module, "PLAIN_SECONDS", 0.0)  # a line on every update
    with Progress("labeling", 10, bar=False) as progress:
        progress.advance(4, "0 errors")
        progress.add_total(5)
        progress.advance(11, "1 errors")
        progress.close()  # as a run's own clean-up does; the context's exit adds nothing
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("  labeling: 4/10 (") and lines[0].endswith(", 0 errors")
    assert lines[1].startswith("  labeling: 15/15 (") and "img/s" in lines[1] and "left" not in lines[1]
    assert len(lines) == 2  # the final count once: closing adds no copy of the line just printed, however often


def test_closing_prints_the_final_count_when_the_last_line_was_older(monkeypatch, capsys):
    with Progress("labeling", 10, bar=False) as progress:
        monkeypatch.setattr(progress_module, "PLAIN_SECONDS", 0.0)
        progress.advance(4)
        monkeypatch.setattr(progress_module, "PLAIN_SECONDS", 3600.0)
        progress.advance(6)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" (")[0] for line in lines] == ["  labeling: 4/10", "  labeling: 10/10"]


def test_a_short_run_prints_no_progress_line(capsys):
    with Progress("rendering", 3, bar=False) as progress:
        progress.advance(3)
    assert capsys.readouterr().out == ""


@pytest.mark.slow
@pytest.mark.ray
def test_ray_stays_off_the_console_unless_verbose(tmp_path):
    """A fresh process that starts Ray: only our lines, unless --verbose brings Ray's back."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", progress_module.VERBOSE_ENV, "RAY_BACKEND_LOG_LEVEL")}
    command = [sys.executable, "-m", "cgi2real.cli", "synth", "--per-class", "2", "--size", "48", "--no-masks"]
    quiet = subprocess.run([*command, "--out", str(tmp_path / "q")], env=env, capture_output=True, text=True, timeout=240)
    assert quiet.returncode == 0, quiet.stderr
    shown = quiet.stdout + quiet.stderr
    assert "wrote 6 images" in shown
    for ray_line in ("Started a local Ray instance", "WARNING", "INFO", "core_worker", "Progress bars"):
        assert ray_line not in shown, shown
    assert not re.search(r"\[\d{4}-\d\d-\d\d [\d:,]+ [IWEF] \d+ \d+\]", shown), shown  # Ray's C++ log lines
    verbose = subprocess.run([sys.executable, "-m", "cgi2real.cli", "--verbose", *command[3:], "--out", str(tmp_path / "v")], env=env, capture_output=True, text=True, timeout=240)
    assert verbose.returncode == 0 and "Started a local Ray instance" in verbose.stdout + verbose.stderr
