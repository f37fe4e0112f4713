"""Tests of hemo.runs: reading, listing, launching and stopping training runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hemo import monitor, runs
from hemo.errors import TrainingError

RUN_TIMEOUT_S = 240


def _fake_run(root: Path, name: str, **status) -> Path:
    path = root / name
    path.mkdir(parents=True)
    runs.write_status(path, name=name, **status)
    return path


def test_status_is_written_atomically_with_every_field(tmp_path: Path) -> None:
    """write_status merges fields, stamps 'updated' and leaves no temporary file."""
    runs.write_status(tmp_path, state="running", epoch=1)
    status = runs.write_status(tmp_path, epoch=2)
    assert set(runs.STATUS_FIELDS) <= status.keys()
    assert status["state"] == "running" and status["epoch"] == 2 and status["updated"] > 0
    assert [p.name for p in tmp_path.iterdir()] == [runs.STATUS_FILE]


def test_dead_running_process_reads_as_failed(tmp_path: Path) -> None:
    """A run whose status says running but whose pid is gone reads back as failed."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _fake_run(tmp_path, "crashed", state="running", pid=dead.pid)
    run = runs.read_run("crashed", tmp_path)
    assert run.state == "failed"
    assert f"process {dead.pid} died" in run.status["message"]


def test_history_dedups_repeated_epochs_and_list_orders_by_update(tmp_path: Path) -> None:
    """A row repeated by a resumed run keeps its last value; newest run is listed first."""
    old = _fake_run(tmp_path, "old", state="finished")
    (old / runs.HISTORY_FILE).write_text("epoch,loss\n0,1.0\n1,0.9\n1,0.8\n2,0.7\n")
    time.sleep(0.01)
    _fake_run(tmp_path, "new", state="stopped")
    history = runs.read_run("old", tmp_path).history
    assert history["epoch"].tolist() == [0, 1, 2]
    assert history["loss"].tolist() == [1.0, 0.8, 0.7]
    assert [r.name for r in runs.list_runs(tmp_path)] == ["new", "old"]


def test_unsafe_run_names_are_refused(tmp_path: Path) -> None:
    """A run name cannot escape the runs folder."""
    with pytest.raises(TrainingError, match="invalid run name '../x'"):
        runs.read_run("../x", tmp_path)


def test_stop_refuses_a_pid_that_is_not_a_training(tmp_path: Path) -> None:
    """stop_run never signals a process that is not a hemo training."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _fake_run(tmp_path, "other", state="running", pid=sleeper.pid)
        with pytest.raises(TrainingError, match="is not a hemo training process"):
            runs.stop_run("other", tmp_path)
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_just_started_process_with_an_empty_command_line_is_read_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Right after its exec a process can show an empty /proc cmdline for a moment: the check
    reads it again instead of calling a just-launched training something else."""
    reads = iter([b"", b"", b"/usr/bin/python\0-m\0hemo\0train\0--name\0x\0"])
    monkeypatch.setattr(runs, "CMDLINE_RETRY_S", 0.0)
    monkeypatch.setattr(Path, "read_bytes", lambda self: next(reads))
    assert runs.is_training_process(os.getpid())
    monkeypatch.setattr(Path, "read_bytes", lambda self: b"")
    assert not runs.is_training_process(os.getpid())


@pytest.mark.slow
def test_launch_then_stop_a_run(tmp_path: Path, phantom_dir: Path) -> None:
    """launch_run starts a detached hemo train; stop_run makes it end as 'stopped'."""
    config = {"data": str(phantom_dir), "image_size": 32, "batch_size": 2, "epochs": 50}
    run = runs.launch_run(config, "bg", tmp_path)
    pid = run.status["pid"]
    assert run.state == "running" and runs.is_training_process(pid)
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not (runs.read_json(run.path / runs.STATUS_FILE) or {}).get("step"):
        assert time.monotonic() < deadline, (run.path / runs.LOG_FILE).read_text()[-2000:]
        time.sleep(0.2)
    runs.stop_run("bg", tmp_path)
    while runs.pid_alive(pid):
        assert time.monotonic() < deadline, "the run did not stop"
        time.sleep(0.2)
    stopped = runs.read_run("bg", tmp_path)
    assert stopped.state == "stopped"
    assert json.loads((run.path / runs.CONFIG_FILE).read_text())["epochs"] == 50
    with pytest.raises(TrainingError, match="is not running"):
        runs.stop_run("bg", tmp_path)


def test_a_stopped_run_with_a_backup_is_not_relaunched_with_other_settings(tmp_path: Path) -> None:
    """The Training page's form resumes a stopped run of that name: with other settings it is
    refused before anything starts, naming the keys; settings that do not touch the weights
    (the threshold, export) may differ; a run with nothing to resume is not compared."""
    from hemo.train import resolve_config

    config = {"data": "/d", "image_size": 32, "epochs": 6}
    path = runs.run_dir("paused", tmp_path)
    path.mkdir(parents=True)
    runs.write_json_atomic(path / runs.CONFIG_FILE, {**resolve_config(config), "name": "paused"})
    runs.write_status(path, name="paused", state=runs.STOPPED, epoch=4, epochs=6)
    assert runs.resume_conflict(path, {**resolve_config(config), "name": "paused"}) == []
    (path / runs.BACKUP_DIR).mkdir()
    other = {**config, "image_size": 64, "epochs": 9, "export": "models/x"}
    differ = runs.resume_conflict(path, {**resolve_config(other), "name": "paused"})
    assert differ == ["epochs", "image_size"]
    with pytest.raises(TrainingError, match=r"differs in epochs, image_size\); .*another name"):
        runs.launch_run(other, "paused", tmp_path)
    assert runs.read_run("paused", tmp_path).state == runs.STOPPED
    assert not (path / runs.REQUEST_FILE).exists()
    same = {**config, "threshold": {"method": "sensitivity"}}
    assert runs.resume_conflict(path, {**resolve_config(same), "name": "paused"}) == []


def test_a_run_started_before_a_key_existed_resumes_at_that_keys_default(tmp_path: Path) -> None:
    """A run whose config.json predates a key (``density``, ``input.dicom_head_only``) did
    what that key's default does: resuming it with the default is no conflict, with another
    value it is."""
    from hemo.train import resolve_config

    config = {"data": "/d", "image_size": 32, "epochs": 6}
    old = {**resolve_config(config), "name": "old"}
    del old["density"]
    del old["input"]["dicom_head_only"]
    path = runs.run_dir("old", tmp_path)
    (path / runs.BACKUP_DIR).mkdir(parents=True)
    runs.write_json_atomic(path / runs.CONFIG_FILE, old)
    assert runs.resume_conflict(path, {**resolve_config(config), "name": "old"}) == []
    held = {**config, "input": {"dicom_head_only": True}}
    assert runs.resume_conflict(path, {**resolve_config(held), "name": "old"}) == ["input"]


DAMAGED_STATUS = {
    "not_utf8": b'\xff\xfe{"state": "finished"}',
    "truncated": b'{"state": "fini',
    "a_list": b"[1, 2]",
    "empty": b"",
}


def test_a_damaged_run_is_named_and_hides_no_other_run(tmp_path: Path) -> None:
    """One run's status.json that cannot be read (not UTF-8, cut short, a list, empty) reads as
    'unreadable' naming the file, never as running; fields of the wrong type (a text pid or
    epoch, a negative ETA, a text update time) read as missing; the good run is listed with
    them, and a damaged report.json or history.csv is named or skipped, not raised."""

    good = _fake_run(tmp_path, "good", state="finished", epoch=3, epochs=3)
    (good / runs.HISTORY_FILE).write_text("epoch,loss\n0,1.0\nx,0.5\n1,0.9\n")
    (good / runs.REPORT_FILE).write_text('{"threshold": "x", "summary": [1], "roc": 5}')
    for name, data in DAMAGED_STATUS.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / runs.STATUS_FILE).write_bytes(data)
    odd = _fake_run(tmp_path, "odd", state="stopped")
    status = json.loads((odd / runs.STATUS_FILE).read_text())
    status.update(pid="abc", epoch="x", eta_s=-5, updated="yesterday", best_value="high")
    (odd / runs.STATUS_FILE).write_text(json.dumps(status))
    listed = {r.name: r for r in runs.list_runs(tmp_path)}
    assert set(listed) == {"good", "odd", *DAMAGED_STATUS}
    for name in DAMAGED_STATUS:
        assert listed[name].state == runs.UNREADABLE
        assert str(tmp_path / name / runs.STATUS_FILE) in listed[name].status["message"]
    assert listed["odd"].state == "stopped"
    assert not {"pid", "epoch", "eta_s", "updated", "best_value"} & listed["odd"].status.keys()
    assert listed["good"].history["epoch"].tolist() == [0, 1]
    table = monitor.runs_table(list(listed.values()))
    assert len(table) == len(listed)
    for run in listed.values():
        monitor.run_progress(run)
        monitor.history_curves(run.history)
    report = monitor.run_report(listed["good"].report)
    assert report.threshold is None and "report.json is malformed" in report.note
    (good / runs.REPORT_FILE).write_bytes(b"\xff")
    note = monitor.run_report(runs.read_run("good", tmp_path).report).note
    assert str(good / runs.REPORT_FILE) in note and "cannot be read" in note


def test_a_running_status_left_behind_by_another_process_reads_as_failed(tmp_path: Path) -> None:
    """status 'running' with a live pid that is not a hemo training and no news for minutes
    (a copied folder, a reused pid) reads as failed, saying why; a fresh one stays running."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        path = _fake_run(tmp_path, "left", state="running", pid=sleeper.pid)
        assert runs.read_run("left", tmp_path).state == runs.RUNNING  # just written
        status = json.loads((path / runs.STATUS_FILE).read_text())
        status["updated"] = time.time() - runs.STALE_S - 1
        (path / runs.STATUS_FILE).write_text(json.dumps(status))
        run = runs.read_run("left", tmp_path)
        assert run.state == runs.FAILED and "is not a hemo training" in run.status["message"]
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_new_training_refuses_an_unreadable_run_folder_or_a_file(tmp_path, monkeypatch, capsys):
    """hemo train --name of a run whose status cannot be read (it may hold a finished model)
    or of a file in the runs folder is one error line; a stopped run whose config.json cannot
    be read is not resumed with unknown settings; launching from the page says the same."""
    from hemo.cli import EXIT_ERROR, main

    monkeypatch.setattr(runs, "RUNS_DIR", tmp_path)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / runs.STATUS_FILE).write_bytes(b"\xff")
    (tmp_path / "afile").write_text("x")
    data = tmp_path / "data"  # exists: the refusal, not a missing --data, must end the run
    data.mkdir()
    for name, message in (("broken", "cannot be read"), ("afile", "is a file, not a run folder")):
        assert main(["train", "--data", str(data), "--name", name]) == EXIT_ERROR
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
        with pytest.raises(TrainingError, match=message):
            runs.launch_run({"data": "unused"}, name, tmp_path)
    stopped = _fake_run(tmp_path, "stopped", state="stopped")
    (stopped / runs.BACKUP_DIR).mkdir()
    (stopped / runs.CONFIG_FILE).write_text('{"epochs": ')
    assert runs.resume_conflict(stopped, {"epochs": 3}) == [
        f"{runs.CONFIG_FILE} (is not valid JSON (JSONDecodeError))"
    ]


def test_launch_run_refuses_what_hemo_train_would_refuse_before_its_folder(tmp_path, phantom_dir):
    """ImageNet weights for the compact CNN, or an --init that is not there, are refused by
    launch_run itself: no run folder, no process that dies before it can say why."""
    from hemo.errors import ModelError

    with pytest.raises(ModelError, match="no ImageNet weights for the 'compact' architecture"):
        runs.launch_run({"data": str(phantom_dir), "weights": "imagenet"}, "inet", tmp_path)
    with pytest.raises(ModelError, match="model file not found"):
        runs.launch_run(
            {"data": str(phantom_dir), "init": str(tmp_path / "x.keras")}, "x", tmp_path
        )
    assert list(tmp_path.iterdir()) == []


def test_hemo_train_refuses_a_run_another_training_is_writing(tmp_path, monkeypatch, capsys):
    """A run whose status says running, written by another live hemo training (a process
    whose command line says so), is refused by hemo train --name (it trained into the same
    folder and overwrote it)."""
    from hemo.cli import EXIT_ERROR, main

    monkeypatch.setattr(runs, "RUNS_DIR", tmp_path)
    other = subprocess.Popen(["hemo train other", "60"], executable="/bin/sleep")
    try:
        assert runs.is_training_process(other.pid)
        _fake_run(tmp_path, "live", state="running", pid=other.pid)
        assert main(["train", "--data", "unused", "--name", "live"]) == EXIT_ERROR
        assert f"run 'live' is already running (pid {other.pid})" in capsys.readouterr().err
    finally:
        other.kill()
        other.wait()
