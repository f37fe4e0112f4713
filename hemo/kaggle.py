"""Download public head-CT datasets through the official ``kaggle`` package, unzip, index.

Sources:

* ``head-ct`` -- the dataset ``felipekitamura/head-ct-hemorrhage`` (200 PNGs).
* ``rsna`` -- the competition ``rsna-intracranial-hemorrhage-detection`` (~180 GB zip, ~450 GB
  unpacked). Kaggle serves competition data only to accounts that accepted the competition's
  rules on the website.

Credentials (kaggle 2.x looks in this order; hemo checks them before importing ``kaggle``, so a
missing token is a clear :class:`~hemo.errors.KaggleError`, never a traceback or an exit):

* ``KAGGLE_API_TOKEN`` (a token from https://www.kaggle.com/settings/api), or ``~/.kaggle/access_token``;
* ``KAGGLE_USERNAME`` and ``KAGGLE_KEY``;
* ``kaggle.json`` (``{"username": ..., "key": ...}``) in ``$KAGGLE_CONFIG_DIR``, ``~/.kaggle/``
  or ``~/.config/kaggle/``, readable by you only (``chmod 600``);
* ``~/.kaggle/credentials.json`` written by ``kaggle auth login`` (OAuth).

Importing ``kaggle`` authenticates at import time and may print or call ``sys.exit``; hemo
imports it lazily, with stdout sent to stderr (so ``--json`` output stays clean), and turns
``SystemExit`` into a :class:`KaggleError`. A finished download leaves a marker file, so a rerun
indexes again without downloading again (``force`` downloads anew).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import stat
import sys
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hemo.config import RAW_DIR
from hemo.errors import DatasetError, KaggleError
from hemo.io import DAMAGED_ZIP_ERRORS

log = logging.getLogger(__name__)

#: Written into a source's folder once its archives are unpacked.
DONE_MARKER = ".hemo-download-complete"
#: Where an API token or kaggle.json comes from (shown in the missing-credentials message).
TOKEN_URL = "https://www.kaggle.com/settings/api"
#: How deep below the download folder the dataset root (labels/CSV) may sit.
ROOT_SEARCH_DEPTH = 2
HTTP_UNAUTHORIZED, HTTP_FORBIDDEN, HTTP_NOT_FOUND = 401, 403, 404
#: Seconds to wait for a connection to kaggle.com, and for the next bytes of an answer, when
#: the kaggle package sets no limit of its own (a stalled proxy would otherwise hang forever).
CONNECT_TIMEOUT_S = 20.0
READ_TIMEOUT_S = 60.0
#: Position of ``timeout`` among ``HTTPAdapter.send``'s arguments after the request.
SEND_TIMEOUT_ARG = 1
BYTES_PER_GB = 1e9
#: Token files kaggle 2.x reads from ~/.kaggle (besides kaggle.json).
TOKEN_FILES = ("access_token", "access_token.txt")
#: What :func:`find_credentials` names when the credentials come from the environment.
ENV_TOKEN, ENV_KEY = "KAGGLE_API_TOKEN", "KAGGLE_USERNAME/KAGGLE_KEY"
ENV_SOURCES = (ENV_TOKEN, ENV_KEY)


@dataclass(frozen=True)
class KaggleSource:
    """A downloadable source.

    Attributes:
        name: hemo's name for it (``head-ct``, ``rsna``).
        kind: ``dataset`` or ``competition``.
        ref: Kaggle's identifier (``owner/slug`` for a dataset, the slug for a competition).
        folder: Sub-folder of the download folder it unpacks into.
        url: Its page on kaggle.com.
        peak_disk_gb: Disk space it takes at its peak, approximately: the archive is kept
            until it is unpacked beside it.
    """

    name: str
    kind: str
    ref: str
    folder: str
    url: str
    peak_disk_gb: float = 0.0

    @property
    def rules_url(self) -> str:
        """Where a competition's rules are accepted."""
        return f"{self.url}/rules"


SOURCES: dict[str, KaggleSource] = {
    s.name: s
    for s in (
        KaggleSource(
            "head-ct",
            "dataset",
            "felipekitamura/head-ct-hemorrhage",
            "head-ct",
            "https://www.kaggle.com/datasets/felipekitamura/head-ct-hemorrhage",
            peak_disk_gb=0.1,
        ),
        KaggleSource(
            "rsna",
            "competition",
            "rsna-intracranial-hemorrhage-detection",
            "rsna",
            "https://www.kaggle.com/competitions/rsna-intracranial-hemorrhage-detection",
            peak_disk_gb=630.0,  # a ~180 GB archive, then ~450 GB of DICOM beside it
        ),
    )
}


@dataclass(frozen=True)
class DownloadResult:
    """A downloaded, unpacked and indexed source.

    Attributes:
        name: The source's hemo name.
        root: The dataset folder (holding the labels and the images).
        layout: The layout the index was built with.
        total: Images indexed.
        index_path: The written ``index.parquet``.
        downloaded: False when a finished earlier download was reused.
    """

    name: str
    root: Path
    layout: str
    total: int
    index_path: Path
    downloaded: bool


def download_hint(path: Path) -> str | None:
    """What to run when ``path``, a missing dataset folder, is where ``hemo download`` would put
    a source (``data/raw/rsna``: ``hemo download rsna --out data/raw``); None otherwise."""
    for source in SOURCES.values():
        if path.name == source.folder:
            return f"download it first: hemo download {source.name} --out {path.parent}"
    return None


def credential_help() -> str:
    """What to do when no Kaggle credentials are found."""
    return "no Kaggle credentials found: " + token_howto()


def token_howto() -> str:
    """How to get Kaggle credentials and where to put them."""
    return (
        f"create an API token at {TOKEN_URL} and either save kaggle.json as "
        "~/.kaggle/kaggle.json (then chmod 600 ~/.kaggle/kaggle.json), or set KAGGLE_USERNAME "
        "and KAGGLE_KEY, or set KAGGLE_API_TOKEN (or save the token as ~/.kaggle/access_token)"
    )


def _kaggle_json_paths(environ: Mapping[str, str], home: Path) -> list[Path]:
    """Where kaggle 2.x looks for kaggle.json."""
    if environ.get("KAGGLE_CONFIG_DIR"):
        return [Path(environ["KAGGLE_CONFIG_DIR"]) / "kaggle.json"]
    xdg = Path(environ.get("XDG_CONFIG_HOME") or home / ".config")
    return [home / ".kaggle" / "kaggle.json", xdg / "kaggle" / "kaggle.json"]


def find_credentials(
    environ: Mapping[str, str] | None = None, home: Path | None = None
) -> str | None:
    """Name where Kaggle credentials would come from, in the order kaggle 2.x tries them
    (an access token, the legacy key, OAuth credentials), without the network.

    Args:
        environ: Environment to inspect (default ``os.environ``).
        home: Home folder (default ``Path.home()``, i.e. ``$HOME``).

    Returns:
        A description (``"KAGGLE_API_TOKEN"``, ``"KAGGLE_USERNAME/KAGGLE_KEY"``, or a file path),
        or ``None`` when there are none. An empty token file is skipped, as kaggle skips it.
    """
    env = os.environ if environ is None else environ
    home = Path.home() if home is None else home
    if env.get("KAGGLE_API_TOKEN"):
        return ENV_TOKEN
    for name in TOKEN_FILES:
        if _holds_token(home / ".kaggle" / name):
            return str(home / ".kaggle" / name)
    if env.get("KAGGLE_USERNAME") and env.get("KAGGLE_KEY"):
        return ENV_KEY
    for path in _kaggle_json_paths(env, home):
        if path.is_file():
            mode = path.stat().st_mode
            if mode & (stat.S_IRGRP | stat.S_IROTH):
                log.warning("%s is readable by other users: chmod 600 %s", path, path)
            return str(path)
    oauth = home / ".kaggle" / "credentials.json"
    return str(oauth) if oauth.is_file() else None


def _holds_token(path: Path) -> bool:
    """Whether kaggle would use the token file ``path``: it exists and is not blank (one that
    cannot be read counts, so that :func:`check_credential_file` names it)."""
    if not path.is_file():
        return False
    try:
        return bool(path.read_text(encoding="utf-8").strip())
    except (OSError, UnicodeDecodeError):
        return True


def _blank_token_files(home: Path | None = None) -> list[Path]:
    """Token files that exist but hold nothing (kaggle skips them)."""
    home = Path.home() if home is None else home
    paths = [home / ".kaggle" / name for name in TOKEN_FILES]
    return [p for p in paths if p.is_file() and not _holds_token(p)]


def check_credential_file(path: Path) -> None:
    """Refuse a credentials file kaggle 2.x would fail on without contacting anything (it
    prints a long banner, twice, and exits): an unreadable or empty token file, a
    ``credentials.json`` that is not a JSON object, a bad ``kaggle.json``
    (:func:`check_kaggle_json`).

    Raises:
        KaggleError: Naming the file and what is wrong with it.
    """
    if path.name == "kaggle.json":
        check_kaggle_json(path)
        return
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise KaggleError(f"cannot read it ({reason}); {token_howto()}", path) from exc
    if path.name in TOKEN_FILES and not text.strip():
        raise KaggleError(f"the token file is empty; {token_howto()}", path)
    if path.name == "credentials.json":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise KaggleError(f"not valid JSON ({exc}); {token_howto()}", path) from exc
        if not isinstance(data, dict) or not data:
            raise KaggleError(
                f"no credentials in it (an empty or non-object JSON); {token_howto()}", path
            )


def check_kaggle_json(path: Path) -> None:
    """Refuse a kaggle.json that cannot work before the kaggle package reads it (it prints a
    long banner and blames the credentials instead).

    Raises:
        KaggleError: Naming the file: unreadable, not JSON, or without ``username`` and ``key``.
    """
    fix = f'it should hold {{"username": "...", "key": "..."}} as downloaded from {TOKEN_URL}'
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise KaggleError(f"cannot read it ({exc.strerror or exc})", path) from exc
    except ValueError as exc:
        raise KaggleError(f"not valid JSON ({exc}); {fix}", path) from exc
    missing = [
        key
        for key in ("username", "key")
        if not isinstance(data, dict) or not isinstance(data.get(key), str) or not data[key]
    ]
    if missing:
        raise KaggleError(f"no {' or '.join(missing)} in it; {fix}", path)


@contextlib.contextmanager
def http_timeouts(connect_s: float | None = None, read_s: float | None = None) -> Iterator[None]:
    """Give every HTTP request made through ``requests`` without a timeout of its own these
    limits (seconds to connect, and between received bytes; default :data:`CONNECT_TIMEOUT_S`
    and :data:`READ_TIMEOUT_S`) while the block runs: kagglesdk sends its API calls with none,
    so a proxy that accepts and never answers hung forever. Requests that set their own keep it
    (the kaggle package's archive transfer: 300 s, retried). It patches ``requests`` for the
    whole process: for one command at a time (``hemo download``), not for concurrent use."""
    limits_s = (connect_s or CONNECT_TIMEOUT_S, read_s or READ_TIMEOUT_S)
    from requests.adapters import HTTPAdapter

    original = HTTPAdapter.send

    def send(self, request, *args, **kwargs):
        # HTTPAdapter.send(request, stream=False, timeout=None, verify=True, cert=None, proxies=None)
        if len(args) >= SEND_TIMEOUT_ARG + 1:
            if args[SEND_TIMEOUT_ARG] is None:
                args = (*args[:SEND_TIMEOUT_ARG], limits_s, *args[SEND_TIMEOUT_ARG + 1 :])
        elif kwargs.get("timeout") is None:
            kwargs["timeout"] = limits_s
        return original(self, request, *args, **kwargs)

    HTTPAdapter.send = send
    try:
        yield
    finally:
        HTTPAdapter.send = original


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Send what the kaggle package prints to stderr (stdout is reserved for --json)."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


def make_api() -> Any:
    """An authenticated ``kaggle`` API object.

    Raises:
        KaggleError: no credentials (message says where kaggle.json goes), or the package
            refused them (it exits; the exit is caught).
    """
    source = find_credentials()
    if source is None:
        blank = ", ".join(str(p) for p in _blank_token_files())
        raise KaggleError(credential_help() + (f" ({blank}: empty)" if blank else ""))
    if source not in ENV_SOURCES:  # a file
        check_credential_file(Path(source))
    log.debug("Kaggle credentials from %s", source)
    banner = io.StringIO()  # kaggle's own sign-in banner: logged, not printed (twice) as well
    try:
        with contextlib.redirect_stdout(banner), contextlib.redirect_stderr(banner):
            from kaggle.api.kaggle_api_extended import KaggleApi

            api = KaggleApi()
            api.authenticate()
        if banner.getvalue().strip():
            log.info("kaggle: %s", banner.getvalue().strip())
    except SystemExit as exc:
        log.debug("kaggle printed: %s", banner.getvalue())
        raise KaggleError(
            f"the kaggle package could not sign in with the credentials from {source} (it "
            f"exited with {exc.code!r}); check them, or replace them: " + token_howto()
        ) from exc
    except Exception as exc:
        log.debug("kaggle printed: %s", banner.getvalue())
        raise _translate(exc, None) from exc
    return api


def _status_code(exc: BaseException) -> int | None:
    """HTTP status of a requests HTTPError (``None`` for anything else)."""
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def _is_network_error(exc: BaseException) -> bool:
    """Whether ``exc`` means kaggle.com could not be reached (DNS, refused, reset, timeout)."""
    import socket

    import requests
    import urllib3.exceptions

    network = (
        requests.exceptions.ConnectionError,
        requests.exceptions.Timeout,
        urllib3.exceptions.HTTPError,
        socket.gaierror,
        ConnectionError,
        TimeoutError,
    )
    return isinstance(exc, network)


def _translate(exc: BaseException, source: KaggleSource | None) -> KaggleError:
    """A KaggleError a person can act on, from whatever the kaggle package raised."""
    import requests

    what = source.ref if source else "kaggle.com"
    status = _status_code(exc)
    if isinstance(exc, requests.exceptions.HTTPError) and status is not None:
        if status == HTTP_FORBIDDEN and source is not None and source.kind == "competition":
            return KaggleError(
                f"403 Forbidden for {what}: accept the competition rules at {source.rules_url} "
                "(signed in with the account of your credentials), then retry"
            )
        if status == HTTP_UNAUTHORIZED:
            found = find_credentials()
            return KaggleError(
                f"401 Unauthorized for {what}: Kaggle rejected the credentials"
                + (f" from {found}" if found else "")
                + " (expired or revoked?); "
                + token_howto()
            )
        if status == HTTP_NOT_FOUND:
            return KaggleError(f"404 Not Found: {what} does not exist or is not visible to you")
        if status == HTTP_FORBIDDEN:
            return KaggleError(
                f"403 Forbidden for {what}: Kaggle refused your account access to it; open "
                f"{source.url if source else 'kaggle.com'} signed in with the account of your "
                "credentials to see why (a dataset may need its terms accepted), then retry"
            )
        return KaggleError(
            f"HTTP {status} from Kaggle for {what}: {exc}; Kaggle may be busy, retry later"
        )
    if isinstance(exc, ImportError):
        return KaggleError(f"the kaggle package cannot be imported ({exc}): pip install kaggle")
    if _is_network_error(exc):
        doing = f"to download {what}" if source else "to sign in"
        return KaggleError(
            f"cannot reach kaggle.com {doing}: no network connection? ({type(exc).__name__}: {exc})"
        )
    if isinstance(exc, OSError):
        return KaggleError(f"cannot write the download of {what}: {exc}")
    return KaggleError(f"Kaggle download of {what} failed: {type(exc).__name__}: {exc}")


def _extract(archive: Path, dest: Path) -> None:
    """Unpack ``archive`` into ``dest``, refusing members that would land outside it."""
    base = dest.resolve()
    try:
        with zipfile.ZipFile(archive) as zf:
            for member in zf.namelist():
                target = (base / member).resolve()
                if target != base and base not in target.parents:
                    raise KaggleError(f"zip member {member!r} points outside {dest}", archive)
            zf.extractall(base)
    except DAMAGED_ZIP_ERRORS as exc:
        raise KaggleError(
            f"not a valid zip ({exc}); delete it and download again", archive
        ) from exc
    except NotImplementedError as exc:  # Deflate64 and other methods zipfile cannot read
        raise KaggleError(
            f"Python's zipfile cannot unpack it ({exc}): unpack it with 7z or unzip into {dest}, "
            f"delete the archive, then run hemo index {dest}",
            archive,
        ) from exc
    except OSError as exc:
        raise KaggleError(f"cannot unpack it into {dest}: {exc}", archive) from exc


def find_dataset_root(folder: Path) -> tuple[Path, str]:
    """The dataset folder inside an unpacked download, and its layout.

    Args:
        folder: Where the archives were unpacked.

    Returns:
        ``(root, layout)`` for ``folder`` or the first sub-folder (up to two levels, sorted)
        whose layout :func:`hemo.datasets.detect_layout` recognises.

    Raises:
        KaggleError: nothing recognisable was unpacked.
    """
    from hemo.datasets import detect_layout

    candidates = [folder]
    level = [folder]
    for _ in range(ROOT_SEARCH_DEPTH):
        level = [c for p in level for c in sorted(p.iterdir()) if c.is_dir()]
        candidates.extend(level)
    for candidate in candidates:
        try:
            return candidate, detect_layout(candidate)
        except DatasetError:
            continue
    raise KaggleError("the download holds no dataset hemo recognises", folder)


def _archive_sizes(dest: Path) -> dict[Path, int]:
    """Size in bytes of each ``*.zip`` in ``dest`` (none when it is not a folder)."""
    if not dest.is_dir():
        return {}
    sizes = {}
    for path in sorted(dest.glob("*.zip")):
        with contextlib.suppress(OSError):
            sizes[path] = path.stat().st_size
    return sizes


def _warn_if_short_of_space(source: KaggleSource, dest: Path) -> None:
    """Warn (not refuse: the figure is approximate) when ``dest``'s disk has less free space
    than ``source`` takes at its peak."""
    import shutil

    try:
        free_gb = shutil.disk_usage(dest).free / BYTES_PER_GB
    except OSError:
        return
    if free_gb < source.peak_disk_gb:
        log.warning(
            "%s takes about %g GB at its peak (archive and unpacked files), but %s has "
            "%.1f GB free: the download or the unpacking may fail for lack of space",
            source.name,
            source.peak_disk_gb,
            dest,
            free_gb,
        )


def _fetch(api: Any, source: KaggleSource, dest: Path, force: bool) -> None:
    """Download ``source``'s archive into ``dest`` (what the kaggle package prints goes to
    stderr); every failure a KaggleError."""
    with _stdout_to_stderr():
        try:
            if source.kind == "competition":
                api.competition_download_files(source.ref, path=str(dest), force=force, quiet=False)
            else:
                api.dataset_download_files(source.ref, path=str(dest), force=force, quiet=False)
        except KaggleError:
            raise
        except Exception as exc:
            raise _translate(exc, source) from exc


def download(
    name: str,
    out: Path = RAW_DIR,
    force: bool = False,
    api_factory: Callable[[], Any] = make_api,
    workers: int | None = None,
) -> DownloadResult:
    """Download a source through the kaggle package, unzip it, write its ``index.parquet``.

    Args:
        name: ``head-ct`` or ``rsna``.
        out: Download folder; the source goes to ``out/<name>/``.
        force: Download even when an earlier download finished.
        api_factory: Returns an authenticated kaggle API object (tests pass a fake).
        workers: Processes reading DICOM headers while indexing (``None``: every core).

    Returns:
        Where the dataset is and how it was indexed.

    Raises:
        KaggleError: unknown name, missing credentials, no network, rules not accepted (403),
            a bad archive, or nothing recognisable unpacked.
    """
    from hemo.datasets import INDEX_FILE, index_dataset, save_index

    if name not in SOURCES:
        raise KaggleError(f"unknown source {name!r}: use one of {', '.join(SOURCES)}")
    source = SOURCES[name]
    dest = Path(out) / source.folder
    marker = dest / DONE_MARKER
    downloaded = force or not marker.is_file()
    if downloaded:
        # Folders made here are removed again if the download fails while they are empty
        made = [p for p in (dest, *dest.parents) if not p.exists()]
        try:
            dest.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise KaggleError(
                f"cannot create the download folder {dest}: {exc.strerror or exc}", out
            ) from exc
        before = _archive_sizes(dest)
        try:
            with http_timeouts():
                api = api_factory()
                _warn_if_short_of_space(source, dest)
                log.info("downloading %s (%s) into %s", source.ref, source.url, dest)
                _fetch(api, source, dest, force)
        except BaseException as exc:  # a KaggleError, or Ctrl-C
            for folder in made:  # innermost first; a folder with anything in it stays
                with contextlib.suppress(OSError):
                    folder.rmdir()
            # archives this attempt began or added to (not one an earlier attempt left)
            after = _archive_sizes(dest)
            left = [p for p, size in after.items() if before.get(p) != size]
            if isinstance(exc, KaggleError) and left:
                raise KaggleError(
                    f"{exc}; the incomplete archive {', '.join(p.name for p in left)} is left in "
                    f"{dest} (the next attempt resumes or replaces it; delete it to free the space)"
                ) from exc
            raise
        archives = sorted(dest.glob("*.zip"))
        for archive in archives:
            log.info("unpacking %s", archive)
            _extract(archive, dest)
            archive.unlink()
        marker.write_text(f"{source.ref}\n", encoding="utf-8")
    else:
        log.info("%s already downloaded in %s (use force to download again)", name, dest)
    root, layout = find_dataset_root(dest)
    result = index_dataset(root, layout=layout, workers=workers)
    index_path = root / INDEX_FILE
    save_index(result.frame, index_path)
    log.info("indexed %d images (%s) into %s", len(result.frame), layout, index_path)
    return DownloadResult(name, root, layout, len(result.frame), index_path, downloaded)
