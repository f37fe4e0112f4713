"""Training runs on disk: list, read, launch and stop them (what the monitor page uses).

A run directory ``runs/<name>/`` holds::

    config.json     resolved configuration
    status.json     live state, rewritten atomically every few seconds (see STATUS_FIELDS)
    history.csv     Keras CSVLogger, one row per epoch (appended across resumes); its
                    ``epoch`` column counts from 0 as Keras does, while status.json's
                    ``epoch`` and the terminal's "Epoch N/M" count epochs done, from 1
    train.log       stdout/stderr of a run started by :func:`launch_run`
    checkpoints/    best.weights.h5 (best validation AUC)
    backup/         BackupAndRestore state (removed when the run finishes)
    model.keras + model.json    final model and its card
    report.json     evaluation report (validation threshold, test metrics)

This module imports neither TensorFlow nor Keras: reading a run is cheap.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from hemo.config import PROJECT_DIR, RUNS_DIR
from hemo.errors import TrainingError

log = logging.getLogger(__name__)

# Files and states -------------------------------------------------------------------------------
CONFIG_FILE = "config.json"
STATUS_FILE = "status.json"
HISTORY_FILE = "history.csv"
LOG_FILE = "train.log"
REPORT_FILE = "report.json"
MODEL_FILE = "model.keras"
CARD_FILE = "model.json"
REQUEST_FILE = "request.json"
CHECKPOINT_DIR = "checkpoints"
BEST_CHECKPOINT = "best.weights.h5"
BACKUP_DIR = "backup"
#: ``hemo crossval --config C`` (name N) keeps its folds' indexes, out-of-fold table and report
#: in ``runs/N-crossval/``; its fold runs are ordinary runs ``N-cv0`` ... beside it.
CROSSVAL_DIR_SUFFIX = "crossval"
CROSSVAL_REPORT_FILE = "crossval.json"
#: Sub-folders of ``N-crossval/`` holding the index of fold k's run, and of the final model's.
CROSSVAL_FOLD_DIR = "fold{fold}"
CROSSVAL_FINAL_DIR = "final"

RUNNING, FINISHED, FAILED, STOPPED = "running", "finished", "failed", "stopped"
STATES = (RUNNING, FINISHED, FAILED, STOPPED)
#: Read-only state of a run whose status.json exists but cannot be read (damaged, half-copied):
#: never written, never resumed into, shown with the file and the problem.
UNREADABLE = "unreadable"
#: Keys of status.json (all present; unknown values are null).
STATUS_FIELDS = (
    "name",
    "state",
    "phase",
    "epoch",
    "epochs",
    "step",
    "steps",
    "eta_s",
    "pid",
    "best_metric",
    "best_value",
    "started",
    "updated",
    "message",
)
#: A run name: letters, digits, dot, dash, underscore (it becomes a folder name).
RUN_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
#: Words that must appear in a process command line for it to count as a hemo training.
TRAIN_CMDLINE_WORDS = ("hemo", "train")
#: A process that has just been started can show an empty command line for a moment (between
#: the exec and the kernel setting up its arguments): read it again this often, this far apart.
CMDLINE_RETRIES = 20
CMDLINE_RETRY_S = 0.05


@dataclass(frozen=True)
class RunInfo:
    """One training run as read from its directory.

    Attributes:
        name: Run name (folder name).
        path: Run directory.
        state: running / finished / failed / stopped ("failed" when the recorded process died).
        status: Content of status.json (state corrected as above).
        config: Resolved configuration (config.json), empty if not written yet.
        history: Per-epoch metrics (history.csv), one row per epoch (read when first used).
        report: Evaluation report (report.json) or None.
        model_path: Final model (model.keras) if written.
        card_path: Its card (model.json) if written.
    """

    name: str
    path: Path
    state: str
    status: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    report: dict[str, Any] | None = None
    model_path: Path | None = None
    card_path: Path | None = None

    @functools.cached_property
    def history(self) -> pd.DataFrame:
        """Per-epoch metrics (history.csv), read on first use (listing runs reads none)."""
        return read_history(self.path)


def check_run_name(name: str) -> str:
    """Return ``name`` if it is a safe run folder name.

    Raises:
        TrainingError: Empty, path-like or otherwise unsafe name.
    """
    if not RUN_NAME_RE.match(name or ""):
        raise TrainingError(
            f"invalid run name {name!r}: use letters, digits, '.', '-', '_' (max 100)"
        )
    return name


def run_dir(name: str, root: Path | None = None) -> Path:
    """Directory of run ``name`` under ``root`` (default ``config.RUNS_DIR``)."""
    return Path(root or RUNS_DIR) / check_run_name(name)


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    """Write JSON to a temporary file in the same folder, then ``os.replace`` it into place."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str, allow_nan=False) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any] | None:
    """JSON object from ``path``, or None when missing or unreadable (being replaced, damaged,
    not UTF-8, not an object)."""
    return read_json_checked(path)[0]


def read_json_checked(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """``(object, None)``, ``(None, None)`` when ``path`` is missing, or ``(None, why)`` when
    it exists and cannot be read as a JSON object."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, None
    except (OSError, UnicodeDecodeError) as exc:
        return None, f"cannot be read ({type(exc).__name__})"
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        return None, f"is not valid JSON ({type(exc).__name__})"
    if not isinstance(data, dict):
        return None, f"holds a JSON {type(data).__name__}, not an object"
    return data, None


#: status.json fields read as numbers; another value (text, a negative ETA) reads as missing.
_NUMERIC_STATUS = ("epoch", "epochs", "step", "steps", "eta_s", "best_value", "pid", "updated",
                   "started")  # fmt: skip
#: A "running" run whose status was not rewritten for this long (the heartbeat rewrites it every
#: few seconds) and whose pid is not a hemo training was left behind: it reads as failed.
STALE_S = 120.0


def _clean_status(status: dict[str, Any]) -> dict[str, Any]:
    """``status`` with numeric fields that are finite numbers (else dropped)."""
    out = dict(status)
    for key in _NUMERIC_STATUS:
        value = out.get(key)
        if value is None:
            continue
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            out.pop(key)
        elif value < 0:
            out.pop(key)
    if out.get("pid") is not None:
        out["pid"] = int(out["pid"])
    return out


#: One read-merge-write of a status file at a time in this process (training thread, heartbeat).
_STATUS_LOCK = threading.Lock()
#: Seconds between the heartbeat's rewrites of a live run's status.
HEARTBEAT_S = 3.0
#: Config keys a stopped or killed run may be resumed with other values of: they do not change
#: the weights (the threshold and referral band are chosen after training).
RESUME_IGNORED = frozenset({"export", "notes", "threshold"})


def write_status(path: Path, **fields: Any) -> dict[str, Any]:
    """Merge ``fields`` into ``path/status.json`` (atomically) and stamp ``updated``.

    Args:
        path: Run directory.
        **fields: Keys of :data:`STATUS_FIELDS`.

    Returns:
        The status written.
    """
    with _STATUS_LOCK:
        status = {key: None for key in STATUS_FIELDS}
        status.update(read_json(path / STATUS_FILE) or {})
        status.update(fields)
        status["updated"] = time.time()
        write_json_atomic(path / STATUS_FILE, status)
    return status


class Heartbeat:
    """Rewrites a live run's status every :data:`HEARTBEAT_S` from a thread of its own, so the
    file stays fresh through slow steps and validation (a context manager)."""

    def __init__(self, path: Path, interval_s: float = HEARTBEAT_S) -> None:
        self.path = path
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="hemo-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _beat(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                write_status(self.path)
            except OSError as exc:  # a full disk must not kill the training
                log.warning("cannot refresh %s: %s", self.path / STATUS_FILE, exc)


def resume_refusal(name: str, state: str, differ: Sequence[str], option: str = "name") -> str:
    """The message refusing to resume run ``name`` with other settings (``option``: what the
    user types the run name into)."""
    return (
        f"run {name!r} ({state}) would be resumed from its backup, but it was started with "
        f"other settings (differs in {', '.join(differ)}); resume it with the same settings "
        f"or choose another {option}"
    )


def resume_conflict(path: Path, config: Mapping[str, Any]) -> list[str]:
    """Config keys whose values differ from those a resumable run was started with.

    A run can be resumed when it has a backup (``BACKUP_DIR``: it trained at least one epoch
    and did not finish). Resuming it with other settings would mix two trainings in one model
    and describe the whole by the second, so callers refuse that.

    Args:
        path: The run directory.
        config: The resolved config of the new attempt.

    Returns:
        The differing keys, sorted (empty: nothing to resume, or the same settings).
    """
    if not (path / BACKUP_DIR).is_dir():
        return []
    saved, problem = read_json_checked(path / CONFIG_FILE)
    if problem is not None:  # what the backup was trained with cannot be told
        return [f"{CONFIG_FILE} ({problem})"]
    if saved is None:
        return []
    from hemo.train import DEFAULTS

    config = json.loads(json.dumps(dict(config), default=str))  # as config.json holds it
    # A key the run's hemo did not know yet counts as its default (what that run did)
    saved = laid_over(json.loads(json.dumps(DEFAULTS, default=str)), saved)
    return sorted(
        key
        for key in set(saved) | set(config)
        if key not in RESUME_IGNORED and saved.get(key) != config.get(key)
    )


def laid_over(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """``top`` laid over ``base``, tables (dicts) merged key by key (a saved run config over
    today's defaults: a key the run's hemo did not know yet counts as its default)."""
    out = dict(base)
    for key, value in top.items():
        below = out.get(key)
        both = isinstance(value, Mapping) and isinstance(below, Mapping)
        out[key] = laid_over(below, value) if both else value
    return out


def read_history(path: Path) -> pd.DataFrame:
    """history.csv with one row per epoch (a row repeated by a resumed run keeps its last);
    values that are not numbers read as missing, a damaged file as empty (logged)."""
    file = path / HISTORY_FILE
    if not file.is_file() or file.stat().st_size == 0:
        return pd.DataFrame()
    try:
        history = pd.read_csv(file)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError, OSError) as exc:
        log.warning("%s cannot be read (%s): its curves are not shown", file, type(exc).__name__)
        return pd.DataFrame()
    history = history.apply(pd.to_numeric, errors="coerce")
    if "epoch" in history.columns:
        history = history.dropna(subset=["epoch"])
        history = history.drop_duplicates("epoch", keep="last").reset_index(drop=True)
    return history


def pid_alive(pid: int | None) -> bool:
    """True when ``pid`` is a live (non-zombie) process."""
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    if stat.exists():
        try:
            state = stat.read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return False
        return state not in ("Z", "X")
    return True


def is_training_process(pid: int | None) -> bool:
    """True when ``pid`` is alive and its command line is a ``hemo train`` (Linux /proc)."""
    if not pid_alive(pid):
        return False
    cmdline = Path(f"/proc/{pid}/cmdline")
    if not cmdline.exists():
        return True
    raw = b""
    for _ in range(CMDLINE_RETRIES):
        try:
            raw = cmdline.read_bytes()
        except OSError:
            return False
        if raw:
            break
        time.sleep(CMDLINE_RETRY_S)  # just started (or a zombie: then empty for good)
    text = " ".join(raw.decode("utf-8", "replace").split("\0"))
    return all(word in text for word in TRAIN_CMDLINE_WORDS)


def read_run(name: str, root: Path | None = None) -> RunInfo:
    """Read run ``name``; a "running" run whose process is gone reads back as "failed".

    Raises:
        TrainingError: No such run.
    """
    path = run_dir(name, root)
    if not path.is_dir():
        raise TrainingError(f"no run named {name!r} under {path.parent}")
    raw, problem = read_json_checked(path / STATUS_FILE)
    status = _clean_status(raw or {})
    state = status.get("state") or RUNNING
    pid = status.get("pid")
    if problem is not None:
        state, why = UNREADABLE, f"{path / STATUS_FILE} {problem}"
        status = {"state": state, "message": why, "unreadable": True}
    elif state not in STATES:
        state = FAILED
        status = {**status, "state": state, "message": f"unknown state {status['state']!r}"}
    elif state == RUNNING and pid and not pid_alive(pid):
        state = FAILED
        status = {
            **status,
            "state": FAILED,
            "message": f"process {pid} died without finishing (crashed or killed)",
        }
    elif state == RUNNING and pid and _stale(status) and not is_training_process(pid):
        state = FAILED
        status = {
            **status,
            "state": FAILED,
            "message": f"left running: no news for over {STALE_S:.0f} s and process {pid} is not "
            "a hemo training",
        }
    model_path = path / MODEL_FILE
    card_path = path / CARD_FILE
    return RunInfo(
        name=name,
        path=path,
        state=state,
        status=status,
        config=read_json(path / CONFIG_FILE) or {},
        report=_report(path),
        model_path=model_path if model_path.is_file() else None,
        card_path=card_path if card_path.is_file() else None,
    )


def _report(path: Path) -> dict[str, Any] | None:
    """report.json, or a stand-in whose ``error`` names the file when it cannot be read."""
    report, problem = read_json_checked(path / REPORT_FILE)
    return {"error": f"{path / REPORT_FILE} {problem}"} if problem else report


def _stale(status: Mapping[str, Any]) -> bool:
    updated = status.get("updated")
    return updated is None or time.time() - float(updated) > STALE_S


def list_runs(root: Path | None = None) -> list[RunInfo]:
    """Every run under ``root`` (default ``config.RUNS_DIR``), most recently updated first."""
    root = Path(root or RUNS_DIR)
    if not root.is_dir():
        return []
    runs = [
        read_run(p.name, root)
        for p in root.iterdir()
        if p.is_dir() and RUN_NAME_RE.match(p.name) and (p / STATUS_FILE).exists()
    ]
    return sorted(runs, key=lambda r: float(r.status.get("updated") or 0.0), reverse=True)


@dataclass(frozen=True)
class CrossvalInfo:
    """One cross-validation's report as read from ``runs/<name>-crossval/crossval.json``.

    Attributes:
        name: The cross-validation's name (its fold runs are ``<name>-cv0`` ...).
        path: Its folder.
        report: The report, or None when it cannot be read.
        error: Why it cannot be read (None when it can).
        updated: Modification time of the report (seconds since the epoch).
    """

    name: str
    path: Path
    report: dict[str, Any] | None
    error: str | None
    updated: float


def list_crossvals(root: Path | None = None) -> list[CrossvalInfo]:
    """Every cross-validation report under ``root`` (default ``config.RUNS_DIR``), newest first;
    a damaged report is listed with its error (the others are still read)."""
    root = Path(root or RUNS_DIR)
    if not root.is_dir():
        return []
    suffix = f"-{CROSSVAL_DIR_SUFFIX}"
    found = []
    for folder in root.iterdir():
        file = folder / CROSSVAL_REPORT_FILE
        if not (folder.name.endswith(suffix) and file.is_file()):
            continue
        try:
            updated = file.stat().st_mtime
        except OSError:
            updated = 0.0
        report, error = _crossval_report(str(file), updated)
        found.append(CrossvalInfo(folder.name.removesuffix(suffix), folder, report, error, updated))
    return sorted(found, key=lambda c: c.updated, reverse=True)


#: Cross-validation reports kept parsed (a page lists them on every rerun).
CROSSVAL_CACHE_ENTRIES = 32


@functools.lru_cache(maxsize=CROSSVAL_CACHE_ENTRIES)
def _crossval_report(file: str, mtime: float) -> tuple[dict[str, Any] | None, str | None]:
    """A ``crossval.json`` without its out-of-fold table (one row per image: ``oof.csv`` has
    it too), or the reason it cannot be read; cached per file and modification time."""
    del mtime  # part of the cache key only
    try:
        report = json.loads(Path(file).read_text(encoding="utf-8"))
        if not isinstance(report, dict):
            raise ValueError("not a JSON object")
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return None, f"{file} cannot be read ({type(exc).__name__}: {exc})"
    report.pop("oof", None)
    return report, None


@dataclass(frozen=True)
class CrossvalPart:
    """What a run is to the cross-validation that trained it.

    Attributes:
        name: The cross-validation's name (its folder ``runs/<name>-crossval/``).
        fold: The fold the run held out, or None for the final model (trained on every image).
    """

    name: str
    fold: int | None


def crossval_of(run: RunInfo) -> CrossvalPart | None:
    """The cross-validation ``run`` is part of: a fold (its data is ``fold<k>/index.parquet``
    in a ``<name>-crossval/`` folder of the runs folder) or the final model (``final/``); None
    for an ordinary run."""
    data = run.config.get("data")
    if not isinstance(data, str) or not data:
        return None
    index = Path(data)
    work = index.parent.parent
    suffix = f"-{CROSSVAL_DIR_SUFFIX}"
    if not work.is_absolute():  # written relative to the project
        work = PROJECT_DIR / work
    if not work.name.endswith(suffix) or work.resolve() != (run.path.parent / work.name).resolve():
        return None  # a folder of that name elsewhere: the user's data, not this runs folder
    name = work.name.removesuffix(suffix)
    if index.parent.name == CROSSVAL_FINAL_DIR:
        return CrossvalPart(name, None)
    fold = re.fullmatch(CROSSVAL_FOLD_DIR.format(fold=r"(\d+)"), index.parent.name)
    return CrossvalPart(name, int(fold.group(1))) if fold else None


def launch_run(config: dict[str, Any], name: str, root: Path | None = None) -> RunInfo:
    """Start ``hemo train`` for ``config`` as a detached background process.

    The configuration is written to ``runs/<name>/request.json``; stdout and stderr go to
    ``train.log``. The process gets its own session, so it outlives the caller (e.g. a page).

    Args:
        config: Training configuration (keys as in a config file).
        name: Run name.
        root: Runs folder (default ``config.RUNS_DIR``).

    Returns:
        The run as read right after starting (state "running").

    Raises:
        TrainingError: Bad name, or a run with that name is live or finished.
        ConfigError, ModelError: Options ``hemo train`` would refuse before its run folder
            (:func:`hemo.train.check_start`: weights, init).
    """
    from hemo.train import check_start, resolve_config

    path = run_dir(name, root)
    if path.exists() and not path.is_dir():
        raise TrainingError(f"{path} is a file, not a run folder; choose another name")
    if path.exists():
        current = read_run(name, root)
        refusal = occupied(current)
        if refusal:
            raise TrainingError(refusal)
        differ = resume_conflict(path, {**resolve_config(config), "name": name})
        if differ:
            raise TrainingError(resume_refusal(name, current.state, differ))
    # what hemo train refuses before its run folder, refused here too: the process would
    # die before writing why, and the page show only that it died
    check_start(resolve_config(config))
    path.mkdir(parents=True, exist_ok=True)
    request = path / REQUEST_FILE
    write_json_atomic(request, {**config, "name": name})
    command = [sys.executable, "-m", "hemo", "train", "--config", str(request), "--name", name]
    env = {**os.environ, "HEMO_RUNS_DIR": str(Path(root or RUNS_DIR))}
    # Detached: own session, no stdin, output to the run's log
    with (path / LOG_FILE).open("ab") as logfile:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=logfile,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            close_fds=True,
        )
    write_status(
        path,
        name=name,
        state=RUNNING,
        pid=process.pid,
        started=time.time(),
        phase="setup",
        message="starting",
    )
    log.info("launched run %s (pid %d), log %s", name, process.pid, path / LOG_FILE)
    return read_run(name, root)


def occupied(run: RunInfo) -> str | None:
    """Why a new training may not use ``run``'s folder (live, finished, or a status that cannot
    be read, which could hide either), else ``None``."""
    if run.state == RUNNING:
        return f"run {run.name!r} is already running (pid {run.status.get('pid', '?')})"
    if run.state == FINISHED:
        return f"run {run.name!r} already finished; choose another name"
    if run.state == UNREADABLE:
        return (
            f"run {run.name!r}: {run.status['message']}, so it may be live or finished; "
            "choose another name, or remove that folder"
        )
    return None


def stop_run(name: str, root: Path | None = None) -> RunInfo:
    """Ask a running training to stop at the end of its current batch (SIGTERM).

    Raises:
        TrainingError: The run is not running, or its pid is not a hemo training process.
    """
    run = read_run(name, root)
    pid = run.status.get("pid")
    if run.state != RUNNING or not pid:
        raise TrainingError(f"run {name!r} is not running (state {run.state})")
    if not is_training_process(int(pid)):
        raise TrainingError(
            f"run {name!r}: pid {pid} is not a hemo training process; not signalling it"
        )
    os.kill(int(pid), signal.SIGTERM)
    log.info("sent SIGTERM to run %s (pid %s)", name, pid)
    return read_run(name, root)
