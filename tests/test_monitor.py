"""hemo.monitor: what the Training page shows of runs, run headless."""

from __future__ import annotations

import os

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


def test_a_finished_run_shows_no_phase_and_says_why_it_has_no_curves(tmp_path):
    """A finished run's status keeps its last phase ('evaluate'): the table and progress line
    show it only while running; a run without curves names its empty, damaged or missing
    history.csv (a live one says no epoch finished yet)."""
    path = make_finished_run(tmp_path, "done")
    runs.write_status(path, name="done", state=runs.FINISHED, epoch=3, epochs=3, phase="evaluate")
    run = runs.read_run("done", tmp_path)
    assert monitor.runs_table([run]).loc[0, "phase"] == ""
    assert "evaluate" not in monitor.run_progress(run)[1]
    history = path / runs.HISTORY_FILE
    history.write_text("")
    assert (
        monitor.no_curves_text(runs.read_run("done", tmp_path)) == f"No curves: {history} is empty."
    )
    history.write_text("garbage\x00,\nmore garbage\n")
    run = runs.read_run("done", tmp_path)
    assert monitor.history_curves(run.history).empty
    assert monitor.no_curves_text(run) == (
        f"No curves: {history} holds no readable epoch row with loss, AUC or accuracy."
    )
    history.unlink()
    assert "is missing" in monitor.no_curves_text(runs.read_run("done", tmp_path))
    runs.write_status(path, name="done", state=runs.RUNNING, pid=os.getpid(), phase="train")
    live = runs.read_run("done", tmp_path)
    assert live.state == runs.RUNNING
    assert monitor.runs_table([live]).loc[0, "phase"] == "train"
    assert monitor.no_curves_text(live).startswith("No finished epoch yet")


def test_epoch_ticks_are_whole_and_at_most_ten():
    """Curve axes tick whole epochs: every one for short runs, at most ten in all."""
    assert [monitor.epoch_tick(n) for n in (0, 1, 3, 10, 11, 60, 500)] == [1, 1, 1, 1, 2, 6, 50]


def test_run_list_signature_changes_when_a_run_appears_or_ends(tmp_path):
    """The page reruns when the runs' names or states change, or a cross-validation report is
    written, not on every status write."""
    from dashboard_fixtures import make_crossval

    def signature():
        return monitor.run_list_signature(runs.list_runs(tmp_path), runs.list_crossvals(tmp_path))

    make_finished_run(tmp_path, "a")
    before = signature()
    runs.write_status(tmp_path / "a", name="a", state=runs.FINISHED, epoch=3, epochs=3, step=9)
    assert signature() == before
    make_finished_run(tmp_path, "b")
    assert signature()[0] == (("a", runs.FINISHED), ("b", runs.FINISHED))
    runs.write_status(tmp_path / "b", name="b", state=runs.STOPPED, message="stopped by SIGTERM")
    assert signature()[0] == (("a", runs.FINISHED), ("b", runs.STOPPED))
    runs_only = signature()
    make_crossval(tmp_path, "cvx")
    with_cv = signature()
    assert with_cv[1] and [name for name, _ in with_cv[1]] == ["cvx"] and with_cv != runs_only
    report = tmp_path / "cvx-crossval" / runs.CROSSVAL_REPORT_FILE
    os.utime(report, (report.stat().st_atime, report.stat().st_mtime + 10))  # written again
    again = signature()
    assert again[0] == with_cv[0] and again[1] != with_cv[1]


def test_crossval_reports_are_listed_and_their_folds_known(tmp_path):
    """hemo crossval's report folder is listed with its pooled figures and fold table; its fold
    runs know which cross-validation they belong to; a damaged report is listed with its error
    while the others are still read."""
    from dashboard_fixtures import make_crossval

    work = make_crossval(tmp_path, "cvx")
    make_finished_run(tmp_path, "plain")
    (tmp_path / "bad-crossval").mkdir()
    (tmp_path / "bad-crossval" / runs.CROSSVAL_REPORT_FILE).write_text("{not json")
    listed = {c.name: c for c in runs.list_crossvals(tmp_path)}
    assert set(listed) == {"cvx", "bad"}
    assert listed["cvx"].error is None and listed["cvx"].path == work
    assert "oof" not in listed["cvx"].report  # one row per image: not read into the page
    assert "crossval.json cannot be read (JSONDecodeError" in listed["bad"].error
    report = listed["cvx"].report
    view = monitor.crossval_view(report)
    assert view.note is None
    assert view.headline["threshold"] == pytest.approx(report["threshold"])
    assert view.headline["roc_auc"] == pytest.approx(report["pooled"]["roc_auc"])
    assert list(view.folds["fold"]) == ["0", "1", "mean", "sd"]
    assert list(view.folds["run"]) == ["cvx-cv0", "cvx-cv1", "", ""]
    assert view.folds.loc[0, "held out"] == 10 and view.folds.loc[0, "train images"] == 10
    assert view.folds.loc[2, "accuracy"] == pytest.approx(report["summary"]["accuracy"]["mean"])
    assert "2-fold stratified CV of the 20 images" in view.caption
    nested = report["referral"]["nested"]
    assert view.referral.startswith(f"Referral band, chosen on the other folds for each fold "
                                    f"(nested): {nested['referred']} of 20 calls referred")  # fmt: skip
    damaged = monitor.crossval_view(listed["bad"].report, listed["bad"].error)
    assert damaged.note == listed["bad"].error and damaged.folds.empty
    assert monitor.crossval_view({"threshold": "x", "folds": []}).note.startswith(
        "crossval.json is malformed (ValueError"
    )
    by_name = {r.name: r for r in runs.list_runs(tmp_path)}
    assert runs.crossval_of(by_name["cvx-cv1"]) == runs.CrossvalPart("cvx", 1)
    assert runs.crossval_of(by_name["plain"]) is None
    # the final model (trained on every image) and a user's data in a folder named *-crossval
    for run_name, data, part in (
        ("cvx-final", work / "final" / "index.parquet", runs.CrossvalPart("cvx", None)),
        ("mine", tmp_path.parent / "study-crossval" / "images" / "index.parquet", None),
        ("other", work / "images" / "index.parquet", None),
    ):
        make_finished_run(tmp_path, run_name)
        runs.write_json_atomic(tmp_path / run_name / runs.CONFIG_FILE, {"data": str(data)})
        assert runs.crossval_of(runs.read_run(run_name, tmp_path)) == part, run_name
    final = monitor.crossval_part_text("cvx-final", runs.CrossvalPart("cvx", None))
    assert final.startswith("cvx-final is the final model of the cross-validation 'cvx'")
    fold = monitor.crossval_part_text("cvx-cv1", runs.CrossvalPart("cvx", 1))
    assert fold.startswith("cvx-cv1 is fold 1 of the cross-validation 'cvx': trained on the other")
