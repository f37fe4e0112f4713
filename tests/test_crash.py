"""Issue 6: kill -9 during conversion and training loses nothing and leaves nothing torn.

tests/test_train.py already kills a run after its first backup and checks the rerun resumes;
this file adds what it lacks: ``status.json`` parses and ``history.csv`` has no torn line at every
instant while a run trains (polled as fast as the files can be read) and right after a kill, and
the conversion kill/rerun cycle on many inputs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pytest
from dicom_factory import ct_bytes

from hemo import runs

pytestmark = pytest.mark.slow

#: Inputs of the killed conversion, and how many must be done before the kill.
N_INPUTS = 160
KILL_AFTER = 24
TIMEOUT_S = 240
TINY_TRAIN = ["--image-size", "32", "--batch-size", "2", "--early-stopping-patience", "50"]


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **extra}


def _wait_for(predicate, what: str, timeout_s: float = TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _decodes(path: Path) -> bool:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    return image is not None and image.shape[:2] == (64, 64)


def test_killed_conversion_keeps_finished_outputs_and_completes_on_rerun(tmp_path):
    """kill -9 mid-convert: finished PNGs decode and are kept, the rerun does the rest, no temp left."""
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    for i in range(N_INPUTS):
        (src / f"s{i:03d}.dcm").write_bytes(ct_bytes(z_mm=float(i)))
    command = [sys.executable, "-m", "hemo", "convert", str(src), str(out), "--size", "64",
               "--workers", "1", "--json"]  # fmt: skip
    process = subprocess.Popen(command, env=_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        _wait_for(lambda: len(list(out.glob("*.png"))) >= KILL_AFTER, "the first outputs")
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        process.kill()
    finished = {p: p.stat().st_mtime_ns for p in out.glob("*.png")}
    assert KILL_AFTER <= len(finished) < N_INPUTS, "the kill came too late to test anything"
    assert all(_decodes(p) for p in finished), "a half-written PNG carries the final name"
    assert len(list(out.glob("*.tmp"))) <= 1
    rerun = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=TIMEOUT_S)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    summary = json.loads(rerun.stdout)
    assert summary["skipped"] == len(finished)
    assert summary["converted"] == N_INPUTS - len(finished) and summary["failed"] == 0
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == N_INPUTS and all(_decodes(p) for p in pngs)
    assert not list(out.glob("*.tmp")), "a temp file survived the rerun"
    assert all(p.stat().st_mtime_ns == mtime for p, mtime in finished.items())


def _check_run_files(path: Path, seen: dict[str, int]) -> None:
    """status.json parses and history.csv ends on a whole line with a constant field count."""
    status_path = path / runs.STATUS_FILE
    try:
        text = status_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = None
    if text is not None:
        status = json.loads(text)  # raises on a torn write
        assert isinstance(status, dict) and "state" in status
        seen["status"] += 1
    history = path / runs.HISTORY_FILE
    try:
        csv = history.read_text(encoding="utf-8")
    except FileNotFoundError:
        return
    if not csv:
        return
    assert csv.endswith("\n"), f"torn history line: {csv.splitlines()[-1]!r}"
    lines = csv.splitlines()
    widths = {line.count(",") for line in lines}
    assert len(widths) == 1, f"rows of different widths: {lines}"
    seen["history"] += 1


def test_training_files_are_whole_at_every_instant_and_after_kill(tmp_path, phantom_dir):
    """Poll status.json and history.csv while a tiny run trains, kill -9 it, check them again."""
    path = tmp_path / "poll"
    command = [sys.executable, "-m", "hemo", "train", "--data", str(phantom_dir), "--name",
               "poll", "--epochs", "40", *TINY_TRAIN]  # fmt: skip
    process = subprocess.Popen(command, env=_env(HEMO_RUNS_DIR=str(tmp_path)),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    seen = {"status": 0, "history": 0}
    try:
        deadline = time.monotonic() + TIMEOUT_S
        epochs_done = 0
        while time.monotonic() < deadline and epochs_done < 2:
            _check_run_files(path, seen)
            history = path / runs.HISTORY_FILE
            if history.is_file():
                epochs_done = max(0, len(history.read_text().splitlines()) - 1)
            assert process.poll() is None, "the run ended before it was killed"
        assert epochs_done >= 2, "training did not get through 2 epochs in time"
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        process.kill()
    _check_run_files(path, seen)
    assert seen["status"] > 50 and seen["history"] > 3, seen
    assert runs.read_run("poll", tmp_path).state == "failed"  # dead pid, not 'running'
