"""Kaggle downloads without network: credentials, network and rules errors, unzip and index."""

from __future__ import annotations

import io
import json
import re
import threading
import zipfile
from pathlib import Path
from typing import Any

import pytest
import requests
import urllib3.exceptions

from hemo.cli import EXIT_ERROR, main
from hemo.errors import KaggleError
from hemo.kaggle import DONE_MARKER, download, find_credentials

RULES_URL = "https://www.kaggle.com/competitions/rsna-intracranial-hemorrhage-detection/rules"


@pytest.fixture()
def no_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty HOME and no KAGGLE_* variables: nowhere to find credentials."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    for name in ("KAGGLE_API_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_CONFIG_DIR"):
        monkeypatch.delenv(name, raising=False)
    return home


class FakeApi:
    """Stands in for the kaggle API object: raises ``error`` or 'downloads' ``archive``."""

    def __init__(self, error: BaseException | None = None, archive: Path | None = None) -> None:
        self.error = error
        self.archive = archive
        self.calls: list[tuple[str, str]] = []

    def _download(self, ref: str, path: str) -> None:
        self.calls.append((ref, path))
        if self.error is not None:
            raise self.error
        assert self.archive is not None
        Path(path, self.archive.name).write_bytes(self.archive.read_bytes())

    def dataset_download_files(self, dataset: str, path: str, **_: Any) -> None:
        self._download(dataset, path)

    def competition_download_files(self, competition: str, path: str, **_: Any) -> None:
        self._download(competition, path)


def _http_error(status: int) -> requests.HTTPError:
    response = requests.Response()
    response.status_code = status
    return requests.HTTPError(f"{status} Client Error", response=response)


@pytest.fixture()
def head_ct_zip(head_ct_dir: Path, tmp_path: Path) -> Path:
    """A zip laid out like Kaggle's head-ct archive, made from the shared sample."""
    archive = tmp_path / "head-ct-hemorrhage.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(head_ct_dir / "labels.csv", "labels.csv")
        for png in sorted((head_ct_dir / "head_ct").glob("*.png")):
            zf.write(png, f"head_ct/head_ct/{png.name}")
    return archive


def test_missing_credentials_say_where_kaggle_json_goes(
    no_credentials: Path, tmp_path: Path
) -> None:
    """Without credentials, download raises before any network with the kaggle.json hint."""
    assert find_credentials() is None
    with pytest.raises(KaggleError, match=r"~/\.kaggle/kaggle\.json.*chmod 600.*KAGGLE_USERNAME"):
        download("head-ct", out=tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_credentials_found_in_each_documented_place(
    no_credentials: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """kaggle.json (warned when world-readable), KAGGLE_CONFIG_DIR, env key and token are found."""
    kaggle_json = no_credentials / ".kaggle" / "kaggle.json"
    kaggle_json.parent.mkdir()
    kaggle_json.write_text('{"username": "u", "key": "k"}')
    kaggle_json.chmod(0o644)
    assert find_credentials() == str(kaggle_json)
    assert "chmod 600" in caplog.text
    kaggle_json.unlink()
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(no_credentials / "cfg"))
    (no_credentials / "cfg").mkdir()
    (no_credentials / "cfg" / "kaggle.json").write_text("{}")
    assert find_credentials() == str(no_credentials / "cfg" / "kaggle.json")
    monkeypatch.setenv("KAGGLE_USERNAME", "u")
    monkeypatch.setenv("KAGGLE_KEY", "k")
    assert find_credentials() == "KAGGLE_USERNAME/KAGGLE_KEY"
    monkeypatch.setenv("KAGGLE_API_TOKEN", "t")
    assert find_credentials() == "KAGGLE_API_TOKEN"


@pytest.mark.parametrize(
    "error",
    [
        requests.exceptions.ConnectionError("Failed to resolve 'www.kaggle.com'"),
        urllib3.exceptions.NewConnectionError(None, "Failed to establish a new connection"),
        requests.exceptions.ReadTimeout("read timed out"),
    ],
    ids=["requests", "urllib3", "timeout"],
)
def test_network_failure_is_a_clear_error(error: BaseException, tmp_path: Path) -> None:
    """A connection error from requests/urllib3 becomes 'no network connection?'."""
    api = FakeApi(error=error)
    with pytest.raises(KaggleError, match="cannot reach kaggle.com to download .*no network"):
        download("head-ct", out=tmp_path, api_factory=lambda: api)
    assert api.calls == [("felipekitamura/head-ct-hemorrhage", str(tmp_path / "head-ct"))]


def test_competition_403_says_accept_the_rules(tmp_path: Path) -> None:
    """A 403 on the RSNA competition points at its rules page."""
    api = FakeApi(error=_http_error(403))
    with pytest.raises(KaggleError, match=f"accept the competition rules at {RULES_URL}"):
        download("rsna", out=tmp_path, api_factory=lambda: api)


def test_401_says_credentials_rejected(
    no_credentials: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 401 says which credentials Kaggle rejected and where new ones go (it said 'no
    Kaggle credentials found' as well, about credentials it had just used)."""
    monkeypatch.setenv("KAGGLE_USERNAME", "u")
    monkeypatch.setenv("KAGGLE_KEY", "k")
    api = FakeApi(error=_http_error(401))
    with pytest.raises(KaggleError) as info:
        download("head-ct", out=tmp_path, api_factory=lambda: api)
    message = str(info.value)
    assert message.startswith(
        "401 Unauthorized for felipekitamura/head-ct-hemorrhage: Kaggle rejected the "
        "credentials from KAGGLE_USERNAME/KAGGLE_KEY (expired or revoked?); create an API token"
    )
    assert "no Kaggle credentials found" not in message


def test_dataset_403_and_server_errors_say_what_to_do(tmp_path: Path) -> None:
    """A 403 on a dataset sends the user to its page; a 5xx says to retry later."""
    with pytest.raises(KaggleError, match=r"403 Forbidden for felipekitamura/head-ct-hemorrhage: "
                       r"Kaggle refused your account access to it; open https://www\.kaggle\.com/"
                       r"datasets/felipekitamura/head-ct-hemorrhage signed in"):  # fmt: skip
        download("head-ct", out=tmp_path, api_factory=lambda: FakeApi(error=_http_error(403)))
    with pytest.raises(
        KaggleError, match=r"HTTP 503 from Kaggle .*; Kaggle may be busy, retry later"
    ):
        download("head-ct", out=tmp_path, api_factory=lambda: FakeApi(error=_http_error(503)))


def test_a_failed_download_names_the_incomplete_archive_it_leaves(tmp_path: Path) -> None:
    """A download that fails after the archive was begun says where the partial file is."""

    class HalfApi(FakeApi):
        def _download(self, ref: str, path: str) -> None:
            Path(path, "head-ct-hemorrhage.zip").write_bytes(b"PK\x03\x04 half")
            raise requests.exceptions.ConnectionError("connection reset by peer")

    with pytest.raises(KaggleError) as info:
        download("head-ct", out=tmp_path / "raw", api_factory=HalfApi)
    assert str(info.value).startswith("cannot reach kaggle.com to download")
    assert str(info.value).endswith(
        f"; the incomplete archive head-ct-hemorrhage.zip is left in {tmp_path / 'raw' / 'head-ct'} "
        "(the next attempt resumes or replaces it; delete it to free the space)"
    )


def test_a_stalled_connection_times_out_instead_of_hanging(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kagglesdk sends its requests without a timeout: a server (or proxy) that accepts and never
    answers hung hemo download forever. Under download, requests without one get hemo's limits,
    and the stall is a 'cannot reach kaggle.com' error; the folder made for it is removed."""
    import socket

    from hemo import kaggle

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # accepts connections, never answers
    url = f"http://127.0.0.1:{silent.getsockname()[1]}/api/v1/datasets/download"

    class StalledApi(FakeApi):
        def _download(self, ref: str, path: str) -> None:
            requests.get(url)  # as kagglesdk does: no timeout

    monkeypatch.setattr(kaggle, "READ_TIMEOUT_S", 0.5)
    outcome: list[BaseException] = []

    def attempt() -> None:
        try:
            download("head-ct", out=tmp_path / "raw", api_factory=StalledApi)
        except BaseException as exc:  # handed to the test's thread
            outcome.append(exc)

    worker = threading.Thread(target=attempt, daemon=True)  # a regression hangs the thread only
    worker.start()
    worker.join(timeout=60)
    silent.close()
    assert not worker.is_alive(), "hemo download still waiting on a server that never answers"
    (error,) = outcome
    assert isinstance(error, KaggleError)
    assert re.match(r"^cannot reach kaggle.com to download .*ReadTimeout", str(error)), error
    assert not (tmp_path / "raw").exists()
    # outside download, requests keep their own (absent) timeout
    from requests.adapters import HTTPAdapter

    assert HTTPAdapter.send.__qualname__ == "HTTPAdapter.send"


def test_download_unzips_indexes_and_reuses_a_finished_download(
    head_ct_zip: Path, tmp_path: Path
) -> None:
    """A downloaded archive is unpacked, indexed to 140 rows, and not fetched again."""
    api = FakeApi(archive=head_ct_zip)
    result = download("head-ct", out=tmp_path / "raw", api_factory=lambda: api)
    assert (result.layout, result.total, result.downloaded) == ("kaggle_head_ct", 140, True)
    assert result.index_path == result.root / "index.parquet" and result.index_path.is_file()
    assert (tmp_path / "raw" / "head-ct" / DONE_MARKER).is_file()
    assert list((tmp_path / "raw" / "head-ct").glob("*.zip")) == []

    def refuse() -> FakeApi:
        raise AssertionError("a finished download must not be fetched again")

    again = download("head-ct", out=tmp_path / "raw", api_factory=refuse)
    assert (again.total, again.downloaded) == (140, False)


def test_zip_member_outside_the_folder_is_refused(tmp_path: Path) -> None:
    """An archive member with ../ is refused and nothing is written outside."""
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("../escaped.txt", "x")
    with pytest.raises(KaggleError, match=r"zip member '\.\./escaped\.txt' points outside"):
        download("head-ct", out=tmp_path / "raw", api_factory=lambda: FakeApi(archive=archive))
    assert not (tmp_path / "raw" / "escaped.txt").exists()


def test_a_damaged_download_says_download_again(tmp_path: Path) -> None:
    """A member whose compressed data is corrupt (zlib.error inside zipfile) is a KaggleError
    naming the archive and what to do, not a traceback."""
    from test_io import corrupt_first_member

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("head_ct/000.png", bytes(range(256)) * 64)
    archive = tmp_path / "head-ct-hemorrhage.zip"
    archive.write_bytes(corrupt_first_member(buffer.getvalue()))
    with pytest.raises(
        KaggleError,
        match=r"head-ct-hemorrhage\.zip: not a valid zip \(Error -3 while decompressing.*"
        r"delete it and download again",
    ):
        download("head-ct", out=tmp_path / "raw", api_factory=lambda: FakeApi(archive=archive))


def test_a_full_disk_while_unpacking_is_not_called_a_bad_zip(
    head_ct_zip: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An OSError while unpacking (disk full) names the folder and the error; the archive is
    not blamed."""

    def disk_full(*_: Any, **__: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(zipfile.ZipFile, "extractall", disk_full)
    with pytest.raises(
        KaggleError, match=r"cannot unpack it into .*No space left on device"
    ) as info:
        download("head-ct", out=tmp_path / "raw", api_factory=lambda: FakeApi(archive=head_ct_zip))
    assert "not a valid zip" not in str(info.value)


def test_kaggle_exit_during_authentication_is_a_kaggle_error(
    no_credentials: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the kaggle package calls sys.exit while authenticating, hemo raises KaggleError."""
    from kaggle.api.kaggle_api_extended import KaggleApi

    from hemo.kaggle import make_api

    monkeypatch.setenv("KAGGLE_USERNAME", "u")
    monkeypatch.setenv("KAGGLE_KEY", "k")

    def exit_now(self: KaggleApi) -> None:
        raise SystemExit(1)

    monkeypatch.setattr(KaggleApi, "authenticate", exit_now)
    with pytest.raises(
        KaggleError,
        match=r"^the kaggle package could not sign in with the credentials from "
        r"KAGGLE_USERNAME/KAGGLE_KEY \(it exited with 1\); check them, or replace them: create",
    ):
        make_api()


@pytest.mark.parametrize(
    ("content", "problem"),
    [("garbage", "not valid JSON"), ("[]", "no credentials in it")],
)
def test_an_unusable_credentials_json_is_named_before_kaggle_reads_it(
    no_credentials: Path, capsys: pytest.CaptureFixture[str], content: str, problem: str
) -> None:
    """A garbage credentials.json, the only credentials, is one line naming the file (the
    kaggle package printed its sign-in banner twice, then hemo said it 'refused' them)."""
    (no_credentials / ".kaggle").mkdir()
    path = no_credentials / ".kaggle" / "credentials.json"
    path.write_text(content)
    assert main(["download", "head-ct", "--out", str(no_credentials / "dl")]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert err.startswith(f"hemo: error: {path}: {problem}") and "create an API token" in err
    assert len(err.strip().splitlines()) == 1, err
    assert not (no_credentials / "dl").exists()


def test_credentials_are_found_in_kaggles_order_past_unusable_files(
    no_credentials: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """kaggle 2.x tries an access token, then the legacy key, then OAuth's credentials.json,
    and skips an empty token file: so does hemo (it refused credentials that work when an
    empty access_token or a garbage credentials.json sat beside them). An empty token file
    and nothing else is 'no credentials', naming the empty file."""
    kaggle_dir = no_credentials / ".kaggle"
    kaggle_dir.mkdir()
    (kaggle_dir / "access_token").write_text("  \n")
    assert find_credentials() is None
    assert main(["download", "head-ct", "--out", str(no_credentials / "dl")]) == EXIT_ERROR
    err = capsys.readouterr().err.strip()
    assert err.startswith("hemo: error: no Kaggle credentials found: create an API token")
    assert err.endswith(f"({kaggle_dir / 'access_token'}: empty)")
    monkeypatch.setenv("KAGGLE_USERNAME", "u")
    monkeypatch.setenv("KAGGLE_KEY", "k")
    assert find_credentials() == "KAGGLE_USERNAME/KAGGLE_KEY"
    monkeypatch.delenv("KAGGLE_USERNAME")
    (kaggle_dir / "credentials.json").write_text("garbage")
    (kaggle_dir / "kaggle.json").write_text('{"username": "u", "key": "k"}')
    (kaggle_dir / "kaggle.json").chmod(0o600)
    assert find_credentials() == str(kaggle_dir / "kaggle.json")
    (kaggle_dir / "access_token").write_text("a-token")
    assert find_credentials() == str(kaggle_dir / "access_token")


def test_cli_without_credentials_is_one_line_exit_2(
    no_credentials: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """hemo download without credentials exits 2 with one line and no traceback (and, with
    --json, the same message as a JSON object on stdout)."""
    assert main(["download", "head-ct", "--out", str(tmp_path / "raw"), "--json"]) == EXIT_ERROR
    captured = capsys.readouterr()
    assert json.loads(captured.out)["error"].startswith("no Kaggle credentials found")
    assert captured.err.strip().startswith("hemo: error: no Kaggle credentials found")
    assert "Traceback" not in captured.err


def test_unknown_source_is_refused() -> None:
    """An unknown source name lists the known ones."""
    with pytest.raises(KaggleError, match="unknown source 'cq500': use one of head-ct, rsna"):
        download("cq500")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("{not json", "not valid JSON"),
        ("", "not valid JSON"),
        ('{"username": "x"}', "no key in it"),
        ("[]", "no username or key in it"),
    ],
)
def test_malformed_kaggle_json_is_named_before_kaggle_reads_it(
    no_credentials: Path, monkeypatch: pytest.MonkeyPatch, text: str, reason: str
) -> None:
    """A kaggle.json that cannot work is refused naming the file and what it should hold; the
    kaggle package (and its banner) is never reached."""
    from kaggle.api.kaggle_api_extended import KaggleApi

    from hemo.kaggle import make_api

    path = no_credentials / ".kaggle" / "kaggle.json"
    path.parent.mkdir()
    path.write_text(text)
    path.chmod(0o600)

    def never(self: KaggleApi) -> None:
        raise AssertionError("the kaggle package must not be asked")

    monkeypatch.setattr(KaggleApi, "authenticate", never)
    with pytest.raises(KaggleError, match=rf"^{path}: {reason}.*\{{\"username\""):
        make_api()


def test_an_unwritable_out_is_one_line_and_a_failed_download_leaves_no_folders(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--out under a file: exit 2, one line naming it, no traceback. A download that fails
    (no network) removes the empty folders it made, and keeps a folder that was there."""
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    assert main(["download", "head-ct", "--out", str(blocker / "raw")]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert err.strip().startswith(f"hemo: error: {blocker / 'raw'}: cannot create the download")
    assert "Traceback" not in err
    offline = FakeApi(error=requests.exceptions.ConnectionError("Failed to resolve"))
    with pytest.raises(KaggleError, match="cannot reach kaggle.com to download"):
        download("head-ct", out=tmp_path / "new" / "raw", api_factory=lambda: offline)
    assert not (tmp_path / "new").exists()
    (tmp_path / "kept").mkdir()
    with pytest.raises(KaggleError):
        download("head-ct", out=tmp_path / "kept", api_factory=lambda: offline)
    assert list((tmp_path / "kept").iterdir()) == []


def test_no_network_while_signing_in_says_so(no_credentials: Path, monkeypatch) -> None:
    """A connection error during authentication says kaggle.com could not be reached to sign in."""
    from kaggle.api.kaggle_api_extended import KaggleApi

    from hemo.kaggle import make_api

    monkeypatch.setenv("KAGGLE_USERNAME", "u")
    monkeypatch.setenv("KAGGLE_KEY", "k")

    def offline(self: KaggleApi) -> None:
        raise requests.exceptions.ConnectionError("Failed to resolve 'www.kaggle.com'")

    monkeypatch.setattr(KaggleApi, "authenticate", offline)
    with pytest.raises(KaggleError, match="cannot reach kaggle.com to sign in: no network"):
        make_api()


def test_too_little_free_space_is_warned_before_downloading(
    head_ct_zip: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    """A disk with less free space than the source takes at its peak gets a warning naming
    both figures; the download still goes ahead (the figure is approximate)."""
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage(10**12, 10**12 - 10**7, 10**7))
    with caplog.at_level("WARNING", logger="hemo.kaggle"):
        result = download(
            "head-ct", out=tmp_path / "raw", api_factory=lambda: FakeApi(archive=head_ct_zip)
        )
    assert result.total == 140
    (warning,) = [r.getMessage() for r in caplog.records if "at its peak" in r.getMessage()]
    assert (
        warning.startswith("head-ct takes about 0.1 GB at its peak")
        and "has 0.0 GB free" in warning
    )


def test_http_timeouts_fill_a_missing_timeout_however_it_is_passed() -> None:
    """The patched send gives a request without a timeout hemo's limits whether the timeout was
    passed by keyword, positionally, or not at all, keeps one that is set, and is undone."""
    from requests.adapters import HTTPAdapter

    from hemo.kaggle import http_timeouts

    seen: list[object] = []
    original = HTTPAdapter.send

    def record(self, request, stream=False, timeout=None, verify=True, cert=None, proxies=None):
        seen.append(timeout)

    HTTPAdapter.send = record
    try:
        with http_timeouts(2.0, 3.0):
            adapter = HTTPAdapter()
            adapter.send("r")
            adapter.send("r", timeout=None)
            adapter.send("r", False, None, True, None, {})
            adapter.send("r", False, 300)
            adapter.send("r", timeout=(1, 1))
        assert HTTPAdapter.send is record
    finally:
        HTTPAdapter.send = original
    assert seen == [(2.0, 3.0), (2.0, 3.0), (2.0, 3.0), 300, (1, 1)]


def test_an_archive_zipfile_cannot_unpack_says_how_to_unpack_it(
    head_ct_zip: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A compression method zipfile lacks (Deflate64) is not called a damaged download: the
    message says to unpack it with another tool and index the folder."""

    def deflate64(*_: Any, **__: Any) -> None:
        raise NotImplementedError("That compression method is not supported")

    monkeypatch.setattr(zipfile.ZipFile, "extractall", deflate64)
    with pytest.raises(KaggleError) as info:
        download("head-ct", out=tmp_path / "raw", api_factory=lambda: FakeApi(archive=head_ct_zip))
    dest = tmp_path / "raw" / "head-ct"
    assert str(info.value) == (
        f"{dest / head_ct_zip.name}: Python's zipfile cannot unpack it (That compression method "
        f"is not supported): unpack it with 7z or unzip into {dest}, delete the archive, then run "
        f"hemo index {dest}"
    )


def test_an_archive_an_earlier_attempt_left_is_not_called_this_attempts(tmp_path: Path) -> None:
    """A failure before anything was fetched (401) does not call a zip left by an earlier
    attempt incomplete from this one."""
    dest = tmp_path / "raw" / "head-ct"
    dest.mkdir(parents=True)
    (dest / "head-ct-hemorrhage.zip").write_bytes(b"PK\x03\x04 from yesterday")
    with pytest.raises(KaggleError) as info:
        download(
            "head-ct", out=tmp_path / "raw", api_factory=lambda: FakeApi(error=_http_error(401))
        )
    assert "incomplete archive" not in str(info.value)
