"""hemo.monitor: what the Training page shows of runs, run headless."""

from __future__ import annotations

import pytest
from dashboard_fixtures import make_finished_run

from hemo import monitor, runs


def test_training_helpers_read_a_finished_run(tmp_path):
    """Curves, comparison, progress and report come out of a finished run's files."""
    make_finished_run(tmp_path, "a")
    make_finished_run(tmp_path, "b", auc_offset=0.05)
    all_runs = runs.list_runs(tmp_path)
    curves = monitor.history_curves(all_runs[0].history)
    assert set(curves["metric"]) == {"loss", "auc", "accuracy"}
    assert set(curves["split"]) == {"train", "val"} and curves["epoch"].min() == 1
    compared = monitor.compare_runs(all_runs, "val_auc")
    assert set(compared["run"]) == {"a", "b"} and len(compared) == 6
    fraction, text = monitor.run_progress(all_runs[0])
    assert fraction == 1.0 and text.startswith("epoch 3/3")
    report = monitor.run_report(all_runs[0].report)
    assert report.confusion.to_numpy().tolist() == [[5, 1], [2, 4]]
    assert report.threshold == 0.42 and len(report.roc) == 3
    table = monitor.runs_table(all_runs)
    assert set(table["state"]) == {"finished"}


def test_run_progress_counts_the_epoch_under_way_as_unfinished():
    """Status epoch N is the one under way (1-based): step 3/6 of epoch 1 of 3 is a sixth done,
    the end of epoch 2 two thirds; a finished run, early-stopped or not, is whole."""
    from types import SimpleNamespace

    def progress(state: str, **status):
        return monitor.run_progress(SimpleNamespace(state=state, status=status))[0]

    assert progress("running", epoch=1, epochs=3, step=3, steps=6) == pytest.approx(1 / 6)
    assert progress("running", epoch=2, epochs=3, step=6, steps=6) == pytest.approx(2 / 3)
    assert progress("running", epoch=3, epochs=3, step=0, steps=6) == pytest.approx(2 / 3)
    assert progress("finished", epoch=16, epochs=20, step=6, steps=6) == 1.0
    assert progress("stopped", epoch=16, epochs=20, step=6, steps=6) == pytest.approx(0.8)


def test_status_caption_says_the_state_once():
    """The page's line under a finished, stopped or failed run: its message, prefixed by the
    state only when the message does not start with it; a finished run's progress has no ETA."""
    from types import SimpleNamespace

    def caption(state: str, message: str | None) -> str | None:
        return monitor.status_caption(SimpleNamespace(state=state, status={"message": message}))

    note = "finished: early stopping after epoch 21 of 60 (val_auc had not improved)"
    assert caption("finished", note) == note
    assert caption("finished", "finished") == "finished"
    assert caption("stopped", "stopped by SIGTERM during train") == (
        "stopped by SIGTERM during train"
    )
    assert caption("stopped", "killed") == "stopped: killed"
    assert caption("failed", "MemoryError: out of memory") == "failed: MemoryError: out of memory"
    assert caption("failed", None) is None and caption("failed", "  ") is None
    status = {"epoch": 21, "epochs": 60, "step": 7, "steps": 7, "eta_s": 0.0}
    assert "ETA" not in monitor.run_progress(SimpleNamespace(state="finished", status=status))[1]
    assert (
        "ETA 0 min 00 s"
        in (monitor.run_progress(SimpleNamespace(state="running", status=status))[1])
    )


def test_training_config_uses_init_for_a_model_file():
    """A model picked as initial weights goes to `init`; none/imagenet go to `weights`."""
    config = monitor.training_config("/d", "compact", "/m/x.keras", 2, 64, 1e-3, "hu")
    assert config["weights"] == "none" and config["init"] == "/m/x.keras"
    assert config["input"] == {"mode": "hu"} and config["image_size"] == 64
    assert (
        monitor.training_config("/d", "compact", "imagenet", 2, 64, 1e-3, "hu")["weights"]
        == "imagenet"
    )
