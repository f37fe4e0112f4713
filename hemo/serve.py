"""Start the dashboard's server and a headless browser for it (browser tests and ``bench/e2e.py``).

No Streamlit import here: the server runs in its own process (``streamlit run``), reached over
loopback only.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from hemo.config import PROJECT_DIR

#: Debian's Chromium (``apt-get install chromium``); Playwright's own browser is the fallback.
CHROMIUM = Path("/usr/bin/chromium")
#: Flags for a headless Chromium on a machine with a closed network (no background requests).
CHROMIUM_ARGS: tuple[str, ...] = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
LOOPBACK = "127.0.0.1"
HEALTH_PATH = "/_stcore/health"
HEALTH_TIMEOUT_S = 2.0
HEALTH_POLL_S = 0.2


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def streamlit_command(port: int) -> list[str]:
    """``streamlit run streamlit_app.py`` on ``LOOPBACK:port``, headless, no usage statistics."""
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(PROJECT_DIR / "streamlit_app.py"),
        "--server.address",
        LOOPBACK,
        "--server.port",
        str(port),
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
    ]


def wait_healthy(url: str, process: subprocess.Popen, timeout_s: float) -> None:
    """Wait until Streamlit's health endpoint under ``url`` answers ``ok``.

    Raises:
        RuntimeError: the server process exited first.
        TimeoutError: no ``ok`` within ``timeout_s`` seconds.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"streamlit exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}{HEALTH_PATH}", timeout=HEALTH_TIMEOUT_S) as answer:
                if answer.read().strip() == b"ok":
                    return
        except OSError:
            time.sleep(HEALTH_POLL_S)
    raise TimeoutError(f"streamlit did not answer on {url} within {timeout_s} s")


def chromium_launch_options() -> dict[str, Any]:
    """Keyword arguments for Playwright's ``chromium.launch``: Debian's Chromium when present."""
    options: dict[str, Any] = {"args": list(CHROMIUM_ARGS)}
    if CHROMIUM.exists():
        options["executable_path"] = str(CHROMIUM)
    return options
