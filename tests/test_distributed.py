"""Tests of multi-worker training: two local workers on 127.0.0.1 through TF_CONFIG."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from hemo import runs

#: Seconds both workers may take (collective setup is slow on a busy machine).
TIMEOUT_S = 420
N_WORKERS = 2


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.slow
def test_two_workers_train_and_only_the_chief_writes(tmp_path: Path, phantom_dir: Path) -> None:
    """Two MultiWorkerMirroredStrategy workers finish one epoch; worker 0 writes the model."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(N_WORKERS)]}
    command = [sys.executable, "-m", "hemo", "train", "--data", str(phantom_dir), "--name", "dist",
               "--epochs", "1", "--image-size", "32", "--batch-size", "8", "--strategy", "multiworker"]  # fmt: skip
    processes = []
    for index in range(N_WORKERS):
        tf_config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
        env = {**os.environ, "HEMO_RUNS_DIR": str(tmp_path), "TF_CONFIG": json.dumps(tf_config),
               "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}  # fmt: skip
        processes.append(
            subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        )
    try:
        outputs = [p.communicate(timeout=TIMEOUT_S)[0].decode(errors="replace") for p in processes]
    finally:
        for p in processes:
            p.kill()
    for p, out in zip(processes, outputs, strict=True):
        assert p.returncode == 0, out[-3000:]
    assert [p.name for p in tmp_path.iterdir()] == ["dist"]
    run = runs.read_run("dist", tmp_path)
    assert run.state == "finished"
    assert run.model_path is not None and run.card_path is not None
    assert run.status["pid"] == processes[0].pid
