"""Batch conversion of DICOM slices to windowed, resized 8-bit PNGs.

Built for large sets (RSNA-2019: ~750k slices):

* **parallel** -- chunks of files go to a process pool, one worker per core by default;
* **resumable** -- an output that exists is complete and is skipped, because every PNG is first
  written to ``<name>.png.tmp`` in the same folder and then renamed with :func:`os.replace`
  (atomic on POSIX and Windows), so a kill never leaves a half-written PNG;
* **shardable** -- :class:`Shard` ``i/n`` takes inputs ``i, i+n, i+2n, ...`` of the sorted list
  (0-based ``i``), so ``n`` machines converting shards ``0/n ... n-1/n`` cover every input
  exactly once, into one shared output tree;
* **reporting** -- a bad file is recorded with its reason and the rest go on;
* **volumes** -- a multi-frame DICOM or a NIfTI volume (``.nii``, ``.nii.gz``) gives one PNG per
  slice, ``<stem>_frame0001.png`` ... in the file's slice order (a volume: inferior to superior),
  and then ``<stem>_frames.json`` (each slice's frame number, PNG and ``slice_z_mm``; for a
  NIfTI slice also its index in the file's array, ``nifti_slice_index``), written
  last: it marks the file done, so a rerun skips it, and a file stopped half-way is redone.

No PHI in the outputs: PNG pixels only (no text chunks), output names mirror the input file names
(never tags such as PatientName), the folder structure mirrors the input's.

One window gives a grayscale PNG; three windows (e.g. the ``rsna3`` composite) give an RGB PNG
whose channels are the windows in order. Pixels: ``round(window(hu) * 255)``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from hemo.errors import ConfigError, DatasetError, HemoError
from hemo.windowing import Window, multi_window, resolve_windows

log = logging.getLogger(__name__)

#: Window channel counts a PNG can hold without an alpha channel: gray and RGB.
PNG_CHANNELS: tuple[int, ...] = (1, 3)
#: Largest output side in pixels (``size``); 0 keeps the native size.
MAX_SIZE_PX = 4096
#: Files handed to a worker process at a time.
CHUNK_FILES = 16
#: Suffixes replaced by ``.png``; any other name gets ``.png`` appended (UID-named files).
DICOM_SUFFIXES: tuple[str, ...] = (".dcm", ".dicom")
#: NIfTI volume names (converted slice by slice); their suffix is dropped from the outputs.
VOLUME_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii")
#: Suffix of the list of a volume's PNGs, written once every slice is converted.
FRAMES_SUFFIX = "_frames.json"
TMP_SUFFIX = ".tmp"
#: Bytes read to sniff whether an extension-less file is DICOM ("DICM" at offset 128).
SNIFF_BYTES = 132
UINT8_MAX = 255

CONVERTED, SKIPPED, FAILED = "converted", "skipped", "failed"


@dataclass(frozen=True)
class Shard:
    """One of ``count`` disjoint slices of a sorted input list.

    Attributes:
        index: 0-based shard number, ``0 <= index < count``.
        count: Number of shards, >= 1.
    """

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ConfigError(
                f"shard must be i/n with n >= 1 and 0 <= i < n (0-based), got "
                f"{self.index}/{self.count}"
            )

    @classmethod
    def parse(cls, text: str) -> Shard:
        """Parse ``"i/n"`` (e.g. ``"0/4"``).

        Raises:
            ConfigError: not two integers separated by ``/``, or out of range.
        """
        index, sep, count = text.partition("/")
        try:
            if not sep:
                raise ValueError(text)
            return cls(int(index), int(count))
        except ValueError as exc:
            raise ConfigError(f"shard must be i/n, e.g. 0/4, got {text!r}") from exc

    def select(self, items: Sequence[Any]) -> list[Any]:
        """Items ``index, index + count, ...`` of ``items`` (which the caller has sorted)."""
        return list(items[self.index :: self.count])


@dataclass(frozen=True)
class Outcome:
    """What happened to one input.

    Attributes:
        source: The input file.
        output: The PNG it maps to.
        status: ``converted``, ``skipped`` (output already there) or ``failed``.
        error: Why it failed (``None`` otherwise).
    """

    source: str
    output: str
    status: str
    error: str | None = None


@dataclass(frozen=True)
class ConvertReport:
    """The result of a conversion run.

    Attributes:
        src: The input folder or index.
        out: The output folder.
        windows: Window names, one per PNG channel.
        size: Output side in pixels (0: native size).
        shard: ``"i/n"``.
        outcomes: One per input of this shard, in input order.
    """

    src: str
    out: str
    windows: tuple[str, ...]
    size: int
    shard: str
    outcomes: tuple[Outcome, ...]

    def count(self, status: str) -> int:
        """Number of inputs with ``status``."""
        return sum(1 for o in self.outcomes if o.status == status)

    @property
    def failures(self) -> tuple[Outcome, ...]:
        """The failed inputs."""
        return tuple(o for o in self.outcomes if o.status == FAILED)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary: counts and the per-file errors (not every outcome)."""
        return {
            "src": self.src,
            "out": self.out,
            "windows": list(self.windows),
            "size": self.size,
            "shard": self.shard,
            "total": len(self.outcomes),
            CONVERTED: self.count(CONVERTED),
            SKIPPED: self.count(SKIPPED),
            FAILED: self.count(FAILED),
            "errors": [{"path": o.source, "error": o.error} for o in self.failures],
        }


def render(hu: npt.ArrayLike, windows: Sequence[Window], size: int) -> npt.NDArray[np.uint8]:
    """Window and resize one slice into PNG pixels.

    Args:
        hu: (H, W) Hounsfield units. Not modified.
        windows: One or three windows (gray or RGB output).
        size: Output side in pixels (square); 0 keeps (H, W).

    Returns:
        uint8 (size, size) for one window, (size, size, 3) for three (channel c = window c).

    Raises:
        ConfigError: the number of windows is not 1 or 3.
    """
    import cv2

    if len(windows) not in PNG_CHANNELS:
        raise ConfigError(
            f"a PNG holds 1 window (gray) or 3 windows (RGB), got {len(windows)}: "
            f"{', '.join(w.name for w in windows)}"
        )
    unit = multi_window(hu, list(windows))
    if size:
        shrinking = size < max(unit.shape[:2])
        interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
        unit = cv2.resize(unit, (size, size), interpolation=interpolation)
    if unit.ndim == 3 and unit.shape[-1] == 1:
        unit = unit[..., 0]
    return np.rint(np.clip(unit, 0.0, 1.0) * UINT8_MAX).astype(np.uint8)


def encode_png(pixels: npt.NDArray[np.uint8]) -> bytes:
    """PNG bytes of (H, W) gray or (H, W, 3) RGB pixels, without any text chunk."""
    import cv2

    bgr = pixels[..., ::-1] if pixels.ndim == 3 else pixels
    ok, buffer = cv2.imencode(".png", np.ascontiguousarray(bgr))
    if not ok:
        raise ConfigError(f"PNG encoding failed for an array of shape {pixels.shape}")
    return buffer.tobytes()


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through ``path.tmp`` and :func:`os.replace` (never half-written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + TMP_SUFFIX)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def convert_one(source: str, output: str, windows: Sequence[Window], size: int) -> Outcome:
    """Convert one DICOM file or NIfTI volume; a failure is returned as an outcome, never raised.

    Args:
        source: DICOM file (single- or multi-frame) or NIfTI volume.
        output: PNG to write (a file of several slices: its frames list, see the module
            docstring).
        windows: One or three windows.
        size: Output side in pixels; 0 keeps the native size.

    Returns:
        ``converted`` (``output``: the PNG, or the frames list), or ``failed`` with the reason.
    """
    try:
        slices = _read_slices(source)
        first = next(slices)
        if isinstance(first, HemoError):
            raise first
        if first.frame is None:
            write_atomic(Path(output), encode_png(render(first.hu, windows, size)))
        else:
            output = _convert_frames(first, slices, Path(output), windows, size)
    except HemoError as exc:
        return Outcome(source, output, FAILED, exc.reason)
    except OSError as exc:
        return Outcome(source, output, FAILED, f"cannot write {output}: {exc.strerror or exc}")
    except Exception as exc:  # a decoder bug must not stop a 750k-file batch: report it
        log.exception("unexpected failure converting %s", source)
        return Outcome(source, output, FAILED, f"unexpected {type(exc).__name__}: {exc}")
    return Outcome(source, output, CONVERTED)


def _read_slices(source: str) -> Any:
    """Every slice of a DICOM (a frame's error in its place) or of a NIfTI volume."""
    from hemo.dicom import read_dicom_frames

    if _volume_suffix(Path(source)):
        from hemo.nifti import read_nifti

        return read_nifti(source)
    return read_dicom_frames(source)


def _convert_frames(
    first: Any, rest: Any, output: Path, windows: Sequence[Window], size: int
) -> str:
    """Write each slice of a volume as ``<stem>_frameNNNN.png``, then ``<stem>_frames.json``.

    Returns:
        The path of the frames list.

    Raises:
        HemoError: a frame that could not be read (the list is then not written: a rerun
            converts the file again).
    """
    import json

    stem = output.with_suffix("")
    listed = []
    for item in (first, *rest):
        if isinstance(item, HemoError):
            raise item
        png = stem.with_name(f"{stem.name}_frame{item.frame:04d}.png")
        write_atomic(png, encode_png(render(item.hu, windows, size)))
        entry = {"frame": item.frame, "png": png.name, "slice_z_mm": item.slice_z_mm}
        if "nifti_slice_index" in item.metadata:  # the slice's index in the file's array
            entry["nifti_slice_index"] = item.metadata["nifti_slice_index"]
        listed.append(entry)
    frames = frames_list(output)
    write_atomic(frames, (json.dumps({"frames": listed}, indent=1) + "\n").encode())
    return str(frames)


def frames_list(output: Path) -> Path:
    """The frames list a volume converted for the planned PNG ``output`` leaves behind."""
    return output.with_name(output.with_suffix("").name + FRAMES_SUFFIX)


def _volume_suffix(path: Path) -> str | None:
    name = path.name.lower()
    return next((s for s in VOLUME_SUFFIXES if name.endswith(s)), None)


def _convert_chunk(
    jobs: Sequence[tuple[str, str]], windows: Sequence[Window], size: int
) -> list[Outcome]:
    """Convert a chunk of (source, output) pairs in a worker process."""
    return [convert_one(source, output, windows, size) for source, output in jobs]


def output_name(relative: Path) -> Path:
    """The PNG path (relative to OUT) of an input path relative to SRC.

    ``CT000001.dcm`` -> ``CT000001.png``; ``1.2.840.1234`` (no DICOM suffix) -> ``1.2.840.1234.png``;
    ``head.nii.gz`` -> ``head.png`` (a volume's slices then go to ``head_frame0001.png`` ...).
    """
    volume = _volume_suffix(relative)
    if volume:
        return relative.with_name(relative.name[: -len(volume)] + ".png")
    if relative.suffix.lower() in DICOM_SUFFIXES:
        return relative.with_suffix(".png")
    return relative.with_name(relative.name + ".png")


def _is_dicom_candidate(path: Path) -> bool:
    """A ``.dcm``/``.dicom``/``.nii``/``.nii.gz`` name, or bytes with the DICM preamble marker."""
    if path.suffix.lower() in DICOM_SUFFIXES or _volume_suffix(path):
        return True
    from hemo.images import sniff_kind

    try:
        with path.open("rb") as handle:
            return sniff_kind(handle.read(SNIFF_BYTES)) == "dicom"
    except OSError:
        return False


def find_inputs(src: Path) -> list[tuple[Path, Path]]:
    """List the DICOM inputs of ``src`` with their relative output names, sorted.

    Args:
        src: A folder (searched recursively; ``.dcm``/``.dicom`` files, extension-less files
            sniffed as DICOM, NIfTI volumes; hidden files skipped) or an index (``.parquet``):
            every row's file.

    Returns:
        ``[(input file, output path relative to OUT)]`` sorted by output path.

    Raises:
        DatasetError: ``src`` does not exist.
    """
    src = Path(src)
    if src.is_file() and src.suffix.lower() == ".parquet":
        from hemo.datasets import load_index

        base = src.resolve().parent
        pairs = []
        for value in load_index(src)["path"]:
            path = Path(str(value))
            relative = Path(os.path.relpath(path, base))
            if relative.parts and relative.parts[0] == os.pardir:
                relative = Path(path.name)
            pairs.append((path, output_name(relative)))
    elif src.is_dir():
        pairs = [
            (path, output_name(path.relative_to(src)))
            for path in src.rglob("*")
            if path.is_file() and not path.name.startswith(".") and _is_dicom_candidate(path)
        ]
    else:
        raise DatasetError("not a folder or an index.parquet", src)
    return sorted(pairs, key=lambda pair: pair[1].as_posix())


def _run_pool(
    jobs: list[tuple[str, str]], windows: Sequence[Window], size: int, workers: int, bar: Any
) -> list[Outcome]:
    """Convert ``jobs`` in a process pool, in chunks; outcomes in job order."""
    chunks = [jobs[i : i + CHUNK_FILES] for i in range(0, len(jobs), CHUNK_FILES)]
    results: dict[int, list[Outcome]] = {}
    pool = ProcessPoolExecutor(max_workers=workers)
    try:
        pending: dict[Future, int] = {
            pool.submit(_convert_chunk, chunk, windows, size): i for i, chunk in enumerate(chunks)
        }
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                i = pending.pop(future)
                results[i] = future.result()
                bar.update(len(results[i]))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return [outcome for i in range(len(chunks)) for outcome in results[i]]


def convert(
    src: Path,
    out: Path,
    window: str | Window | Iterable = "brain",
    size: int = 256,
    workers: int | None = None,
    shard: Shard | None = None,
) -> ConvertReport:
    """Convert the DICOM slices of ``src`` to PNGs under ``out``.

    Args:
        src: A folder of DICOM files (recursive) or an ``index.parquet``.
        out: Output folder; mirrors the input tree, ``.dcm`` -> ``.png``.
        window: One preset (``"brain"``), ``"C/W"`` in HU, or a composite (``"rsna3"``) -- one or
            three windows (see :mod:`hemo.windowing`).
        size: Output side in pixels (square), 1..4096; 0 keeps the native size.
        workers: Processes (``None``: every core; 1: in this process).
        shard: Which 1/n of the sorted inputs to convert (``None``: all).

    Returns:
        The report: one outcome per input of the shard (skipped ones included).

    Raises:
        ConfigError: bad window, size or shard.
        DatasetError: ``src`` missing, or it has no DICOM file.
    """
    from tqdm import tqdm

    windows = resolve_windows(window)
    if len(windows) not in PNG_CHANNELS:
        raise ConfigError(
            f"a PNG holds 1 window (gray) or 3 windows (RGB), got {len(windows)} "
            f"({', '.join(w.name for w in windows)})"
        )
    if not 0 <= size <= MAX_SIZE_PX:
        raise ConfigError(f"size must be 0 (native) or 1..{MAX_SIZE_PX} px, got {size}")
    shard = shard or Shard()
    inputs = find_inputs(src)
    if not inputs:
        raise DatasetError(
            "no DICOM file found (.dcm/.dicom, files starting with DICM, .nii/.nii.gz)", src
        )
    out = Path(out)
    mine = shard.select(inputs)
    outcomes: dict[int, Outcome] = {}
    jobs: list[tuple[str, str]] = []
    positions: list[int] = []
    for i, (path, relative) in enumerate(mine):
        target = out / relative
        if target.is_file():
            outcomes[i] = Outcome(str(path), str(target), SKIPPED)
        elif frames_list(target).is_file():
            outcomes[i] = Outcome(str(path), str(frames_list(target)), SKIPPED)
        else:
            jobs.append((str(path), str(target)))
            positions.append(i)
    n_workers = max(1, workers if workers is not None else (os.cpu_count() or 1))
    log.info(
        "%d inputs in shard %d/%d: %d to convert, %d already done, %d workers",
        len(mine),
        shard.index,
        shard.count,
        len(jobs),
        len(outcomes),
        n_workers,
    )
    with tqdm(total=len(jobs), desc="convert", unit="file", disable=None) as bar:
        if n_workers == 1 or len(jobs) <= CHUNK_FILES:
            done = []
            for source, output in jobs:
                done.append(convert_one(source, output, windows, size))
                bar.update(1)
        else:
            done = _run_pool(jobs, windows, size, n_workers, bar)
    outcomes.update(zip(positions, done, strict=True))
    report = ConvertReport(
        src=str(src),
        out=str(out),
        windows=tuple(w.name for w in windows),
        size=size,
        shard=f"{shard.index}/{shard.count}",
        outcomes=tuple(outcomes[i] for i in range(len(mine))),
    )
    for failure in report.failures:
        log.error("%s: %s", failure.source, failure.error)
    return report
