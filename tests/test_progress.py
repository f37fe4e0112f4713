"""hemo.progress: a bar on a terminal, log lines off one; the predictor counts every scan."""

from __future__ import annotations

import io
import logging
from pathlib import Path

from hemo import progress as progress_module
from hemo.progress import progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_off_a_terminal_progress_is_logged_with_counts_and_rate(caplog):
    """A pipe or log file gets lines ("predict: 2 of 3 scans (... scans/s)") at the interval
    and one at the end, and no bar characters."""
    stream = io.StringIO()
    with caplog.at_level(logging.INFO, logger=progress_module.__name__):
        with progress(3, "predict", "scan", stream=stream, every_s=0.0) as advance:
            advance(1)
            advance(1)
            advance(1)
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0].startswith("predict: 1 of 3 scans (") and messages[0].endswith(" scans/s)")
    assert messages[-1].startswith("predict: 3 of 3 scans (") and messages[-1].endswith(", done")
    assert stream.getvalue() == ""


def test_off_a_terminal_a_short_step_says_nothing_and_an_unknown_total_is_counted(caplog):
    """Under the interval nothing is logged; with no total the line has no "of"."""
    with caplog.at_level(logging.INFO, logger=progress_module.__name__):
        with progress(None, "explain", "scan", stream=io.StringIO()) as advance:
            advance(5)
        assert caplog.records == []
        with progress(None, "explain", "scan", stream=io.StringIO(), every_s=0.0) as advance:
            advance(5)
    assert caplog.records[0].getMessage().startswith("explain: 5 scans (")


def test_on_a_terminal_a_bar_is_drawn(caplog):
    """A terminal gets tqdm's bar (its count and unit), not log lines."""
    stream = _Terminal()
    with caplog.at_level(logging.INFO, logger=progress_module.__name__):
        with progress(4, "convert", "file", stream=stream, every_s=0.0) as advance:
            advance(4)
    assert "convert" in stream.getvalue() and "4/4" in stream.getvalue()
    assert caplog.records == []


def test_the_predictor_counts_every_scan_read_failed_ones_too(tmp_path: Path):
    """Predictor.run calls on_scan once per scan, a file that cannot be read included."""
    from tiny_models import tiny_model_path

    from hemo.phantom import write_demo_dataset
    from hemo.predict import Predictor

    write_demo_dataset(tmp_path / "ph", n_studies=1, seed=0, slices_per_study=3, size=64)
    files = sorted((tmp_path / "ph" / "stage_2_train").glob("*.dcm"))
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(b"not a scan")
    counted: list[int] = []
    with Predictor(tiny_model_path("hu", ("any",)), batch_size=2) as predictor:
        batch = predictor.run([*map(str, files), str(broken)], on_scan=counted.append)
    assert counted == [1] * 4 and batch.n_failed == 1


def test_default_stream_is_stderr(monkeypatch):
    """Without a stream the bar goes to stderr when stderr is a terminal (not to stdout)."""
    terminal, other = _Terminal(), _Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    monkeypatch.setattr("sys.stdout", other)
    with progress(2, "predict", "scan") as advance:
        advance(2)
    assert "2/2" in terminal.getvalue() and other.getvalue() == ""
