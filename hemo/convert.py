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
* **one output per input** -- :func:`plan_outputs`: an input whose PNG name would be shared
  with another input (``a.dcm`` and ``a``, ``a.dcm`` and ``a.DCM``, ``x.dcm`` and ``x.nii``) takes
  its whole file name plus ``.png`` (``a.dcm.png``, ``a.png``, ``a.DCM.png``); every other input
  keeps its usual name. The plan is made from the whole input list, so every shard picks the
  same names;
* **settings recorded** -- ``OUT/.hemo_convert.json`` holds the windows and size, written before
  any PNG; a run into that OUT with other settings is refused (its skipped PNGs would not be
  what it reports);
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

import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from hemo import config
from hemo.errors import ConfigError, DatasetError, HemoError
from hemo.preprocess import _pad_square
from hemo.preprocess import head_only as head_only_hu
from hemo.windowing import COMPOSITES, PRESETS, Window, multi_window, resolve_windows

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
#: A volume's slice PNG name without ``.png``: its input's stem, then ``_frameNNNN``.
FRAME_STEM = re.compile(r"(?P<stem>.+)_frame\d{4,}")
#: Record of a conversion's settings in OUT (hidden, so never taken for an input).
SETTINGS_FILE = ".hemo_convert.json"
TMP_SUFFIX = ".tmp"
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
class Planned:
    """One input and its output, planned before any conversion.

    Attributes:
        source: The input file.
        output: Its PNG, relative to OUT.
        clashes: Other inputs whose outputs would still overlap this one (an input is then not
            converted and reported as failed); empty normally.
    """

    source: Path
    output: Path
    clashes: tuple[Path, ...] = ()


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
        head_only: Everything outside the head's outline was set to air first.
    """

    src: str
    out: str
    windows: tuple[str, ...]
    size: int
    shard: str
    outcomes: tuple[Outcome, ...]
    head_only: bool = False

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
            "head_only": self.head_only,
            "shard": self.shard,
            "total": len(self.outcomes),
            CONVERTED: self.count(CONVERTED),
            SKIPPED: self.count(SKIPPED),
            FAILED: self.count(FAILED),
            "errors": [{"path": o.source, "error": o.error} for o in self.failures],
        }


def render(
    hu: npt.ArrayLike, windows: Sequence[Window], size: int, head_only: bool = False
) -> npt.NDArray[np.uint8]:
    """Window and resize one slice into PNG pixels.

    Args:
        hu: (H, W) Hounsfield units. Not modified.
        windows: One or three windows (gray or RGB output).
        size: Output side in pixels (square; a non-square slice is padded with air to a
            square first, keeping its proportions, as the model input does); 0 keeps (H, W).
        head_only: First set everything outside the head's outline to air
            (:func:`hemo.preprocess.head_only`: the scanner's head holder, the table), as a
            model with ``input.dicom_head_only`` sees a DICOM.

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
    if head_only:
        hu = head_only_hu(hu)
    if size:  # a non-square slice is centred on air first, as for the model: never stretched
        hu = _pad_square(np.asarray(hu, dtype=np.float32), config.HU_AIR)
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


def convert_one(
    source: str, output: str, windows: Sequence[Window], size: int, head_only: bool = False
) -> Outcome:
    """Convert one DICOM file or NIfTI volume; a failure is returned as an outcome, never raised.

    Args:
        source: DICOM file (single- or multi-frame) or NIfTI volume.
        output: PNG to write (a file of several slices: its frames list, see the module
            docstring).
        windows: One or three windows.
        size: Output side in pixels; 0 keeps the native size.
        head_only: Everything outside the head's outline to air first (see :func:`render`).

    Returns:
        ``converted`` (``output``: the PNG, or the frames list), or ``failed`` with the reason.
    """
    try:
        slices = _read_slices(source)
        first = next(slices)
        if isinstance(first, HemoError):
            raise first
        if first.frame is None:
            write_atomic(Path(output), encode_png(render(first.hu, windows, size, head_only)))
        else:
            output = _convert_frames(first, slices, Path(output), windows, size, head_only)
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
    first: Any,
    rest: Any,
    output: Path,
    windows: Sequence[Window],
    size: int,
    head_only: bool = False,
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
        write_atomic(png, encode_png(render(item.hu, windows, size, head_only)))
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
    jobs: Sequence[tuple[str, str]], windows: Sequence[Window], size: int, head_only: bool = False
) -> list[Outcome]:
    """Convert a chunk of (source, output) pairs in a worker process."""
    return [convert_one(source, output, windows, size, head_only) for source, output in jobs]


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


def whole_name_output(relative: Path) -> Path:
    """The PNG of an input whose usual name is shared: its whole file name plus ``.png``.

    ``a.dcm`` -> ``a.dcm.png``; ``a`` -> ``a.png``; ``head.nii.gz`` -> ``head.nii.gz.png``.
    """
    return relative.with_name(relative.name + ".png")


def _overlaps(names: Sequence[Path]) -> dict[int, set[int]]:
    """For each planned output that overlaps another, the positions of the others.

    Two outputs overlap when they are equal, or when one is a slice PNG of the other
    (``head_frame0001.png`` beside ``head.png``: any input may turn out to be a volume).
    Names are compared exactly (case-sensitive).
    """
    by_name: dict[Path, list[int]] = {}
    for i, name in enumerate(names):
        by_name.setdefault(name, []).append(i)
    overlaps: dict[int, set[int]] = {}
    for name, owners in by_name.items():
        frame = FRAME_STEM.fullmatch(name.stem)
        if frame:
            owners = owners + by_name.get(name.with_name(frame["stem"] + ".png"), [])
        if len(owners) > 1:
            for i in owners:
                overlaps.setdefault(i, set()).update(j for j in owners if j != i)
    return overlaps


def plan_outputs(inputs: Sequence[tuple[Path, Path]]) -> list[Planned]:
    """Give every input its own output, from the whole input list (the same in every shard).

    An input keeps :func:`output_name` unless that output overlaps another input's (same PNG, or
    a volume's slice PNGs); then it takes :func:`whole_name_output` instead, repeated until no
    two outputs overlap. Whole names differ for different files of one folder, so what is still
    shared after that (two index rows outside the index's folder with one file name) is
    reported in ``clashes``.

    Args:
        inputs: ``[(input file, its path relative to SRC)]``, each file once.

    Returns:
        One :class:`Planned` per input, sorted by output path, then input path.
    """
    names = [output_name(relative) for _, relative in inputs]
    renamed: set[int] = set()
    while True:
        overlaps = _overlaps(names)
        fresh = overlaps.keys() - renamed
        if not fresh:
            break
        for i in fresh:
            names[i] = whole_name_output(inputs[i][1])
        renamed |= fresh
    planned = [
        Planned(path, names[i], tuple(sorted(inputs[j][0] for j in overlaps.get(i, ()))))
        for i, (path, _) in enumerate(inputs)
    ]
    return sorted(planned, key=lambda p: (p.output.as_posix(), str(p.source)))


def _is_dicom_candidate(path: Path) -> bool:
    """A ``.dcm``/``.dicom``/``.nii``/``.nii.gz`` name, or bytes with the DICM preamble marker."""
    if path.suffix.lower() in DICOM_SUFFIXES or _volume_suffix(path):
        return True
    from hemo.images import SNIFF_BYTES, sniff_kind

    try:
        with path.open("rb") as handle:
            return sniff_kind(handle.read(SNIFF_BYTES)) == "dicom"
    except OSError:
        return False


def find_inputs(src: Path) -> list[Planned]:
    """List the DICOM inputs of ``src`` with their outputs (see :func:`plan_outputs`), sorted.

    Args:
        src: A folder (searched recursively; ``.dcm``/``.dicom`` files, extension-less files
            sniffed as DICOM, NIfTI volumes; hidden files skipped) or an index (``.parquet``):
            every row's file (a file listed twice is one input).

    Returns:
        One :class:`Planned` per input, sorted by output path relative to OUT.

    Raises:
        DatasetError: ``src`` does not exist, or is an index of images (no DICOM to convert).
    """
    src = Path(src)
    if src.is_file() and src.suffix.lower() == ".parquet":
        from hemo.datasets import load_index
        from hemo.images import images_only

        base = src.resolve().parent
        listed = list(dict.fromkeys(str(v) for v in load_index(src)["path"]))
        found = images_only(listed)
        if found is not None:
            first, kind = found
            raise DatasetError(
                f"this index lists {kind.upper()} images ({first}, and the other files "
                "sampled), not DICOM: hemo convert turns DICOM and NIfTI into PNG; train on "
                "the images as they are (display input)",
                src,
            )
        pairs = []
        for value in listed:
            path = Path(value)
            relative = Path(os.path.relpath(path, base))
            if relative.parts and relative.parts[0] == os.pardir:
                relative = Path(path.name)
            pairs.append((path, relative))
    elif src.is_dir():
        pairs = [
            (path, path.relative_to(src))
            for path in src.rglob("*")
            if path.is_file() and not path.name.startswith(".") and _is_dicom_candidate(path)
        ]
    else:
        raise DatasetError("not a folder or an index.parquet", src)
    return plan_outputs(pairs)


def describe_settings(windows: Sequence[Window], size: int, head_only: bool = False) -> str:
    """``"window brain, size 256"``: a composite or preset by its name, else ``C/W`` in HU."""
    names = tuple(w.name for w in windows)
    if all(PRESETS.get(w.name) == w for w in windows):
        text = next((c for c, members in COMPOSITES.items() if members == names), ",".join(names))
    else:
        text = ",".join(f"{w.center_hu:g}/{w.width_hu:g}" for w in windows)
    return f"window {text}, size {size}" + (", head only" if head_only else "")


def settings_record(
    windows: Sequence[Window], size: int, head_only: bool = False
) -> dict[str, Any]:
    """The JSON-ready settings of a conversion: what decides its PNGs' pixels (not the shard)."""
    return {
        "windows": [
            {"name": w.name, "center_hu": w.center_hu, "width_hu": w.width_hu} for w in windows
        ],
        "size": size,
        "head_only": head_only,
    }


def _recorded_settings(path: Path) -> tuple[tuple[Window, ...], int, bool]:
    """The windows, size and head-only setting of a settings record (a record written before
    the setting existed: off).

    Raises:
        ConfigError: the file cannot be read or is not a settings record.
    """
    try:
        record = json.loads(path.read_text())
        windows = tuple(
            Window(str(w["name"]), float(w["center_hu"]), float(w["width_hu"]))
            for w in record["windows"]
        )
        head_only = record.get("head_only", False)
        if not isinstance(head_only, bool):
            raise ValueError(f"head_only is {head_only!r}, not true or false")
        return windows, int(record["size"]), head_only
    except (OSError, ValueError, TypeError, KeyError, HemoError) as exc:
        raise ConfigError(
            f"not a hemo convert settings record ({exc}); if the PNGs beside it were made with "
            "the settings you give now, delete it and rerun",
            path,
        ) from exc


def claim_settings(
    out: Path, windows: Sequence[Window], size: int, head_only: bool = False
) -> None:
    """Record the settings in ``OUT/.hemo_convert.json``, or check them against the record.

    Written once, atomically (a uniquely named temp file, then a hard link that fails if another
    shard got there first, then both compare); on a file system without hard links the temp is
    renamed over the record instead. An OUT without a record (converted before records existed)
    is resumed with a warning: its PNGs cannot be checked.

    Raises:
        ConfigError: OUT was converted with other windows (centre/width), size or head-only
            setting, or its record is unreadable, or it cannot be written.
    """
    path = out / SETTINGS_FILE
    if not path.exists():
        if out.is_dir() and any(not p.name.startswith(".") for p in out.iterdir()):
            log.warning(
                "%s: no %s (converted by an older hemo): assuming its outputs have %s",
                out,
                SETTINGS_FILE,
                describe_settings(windows, size, head_only),
            )
        data = json.dumps(settings_record(windows, size, head_only), indent=1) + "\n"
        tmp = None
        try:
            out.mkdir(parents=True, exist_ok=True)
            handle, tmp = tempfile.mkstemp(prefix=SETTINGS_FILE + ".", suffix=TMP_SUFFIX, dir=out)
            with os.fdopen(handle, "w") as stream:
                stream.write(data)
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass  # another shard recorded first: compared below
            except OSError:
                os.replace(tmp, path)
        except OSError as exc:
            raise ConfigError(f"cannot write {SETTINGS_FILE}: {exc.strerror or exc}", out) from exc
        finally:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
    recorded, recorded_size, recorded_head_only = _recorded_settings(path)
    same_windows = [(w.center_hu, w.width_hu) for w in recorded] == [
        (w.center_hu, w.width_hu) for w in windows
    ]
    if not same_windows or recorded_size != size or recorded_head_only != head_only:
        was = describe_settings(recorded, recorded_size, recorded_head_only)
        raise ConfigError(
            f"converted with {was} (see {SETTINGS_FILE}), not "
            f"{describe_settings(windows, size, head_only)}; rerun with those settings or "
            "another OUT",
            out,
        )


def _run_pool(
    jobs: list[tuple[str, str]],
    windows: Sequence[Window],
    size: int,
    workers: int,
    advance: Callable[[int], object],
    head_only: bool = False,
) -> list[Outcome]:
    """Convert ``jobs`` in a process pool, in chunks; outcomes in job order (``advance(n)``
    as chunks of ``n`` are done)."""
    chunks = [jobs[i : i + CHUNK_FILES] for i in range(0, len(jobs), CHUNK_FILES)]
    results: dict[int, list[Outcome]] = {}
    pool = ProcessPoolExecutor(max_workers=workers)
    try:
        pending: dict[Future, int] = {
            pool.submit(_convert_chunk, chunk, windows, size, head_only): i
            for i, chunk in enumerate(chunks)
        }
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                i = pending.pop(future)
                results[i] = future.result()
                advance(len(results[i]))
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
    head_only: bool = False,
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
        head_only: Set everything outside the head's outline to air first (see
            :func:`render`): PNGs as a model with ``input.dicom_head_only`` sees the DICOM.

    Returns:
        The report: one outcome per input of the shard (skipped ones included; an input whose
        output would still be shared with another's fails, see :func:`plan_outputs`).

    Raises:
        ConfigError: bad window, size or shard, or ``out`` was converted with other windows or
            size (nothing is written then).
        DatasetError: ``src`` missing, or it has no DICOM file.
    """
    from hemo.progress import progress

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
    claim_settings(out, windows, size, head_only)
    mine = shard.select(inputs)
    outcomes: dict[int, Outcome] = {}
    jobs: list[tuple[str, str]] = []
    positions: list[int] = []
    for i, planned in enumerate(mine):
        path, target = planned.source, out / planned.output
        if planned.clashes:
            others = ", ".join(str(p) for p in planned.clashes)
            outcomes[i] = Outcome(
                str(path),
                str(target),
                FAILED,
                f"its output {target} would also be written from {others}; rename one of them",
            )
        elif target.is_file():
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
    with progress(len(jobs), "convert", "file") as advance:
        if n_workers == 1 or len(jobs) <= CHUNK_FILES:
            done = []
            for source, output in jobs:
                done.append(convert_one(source, output, windows, size, head_only))
                advance(1)
        else:
            done = _run_pool(jobs, windows, size, n_workers, advance, head_only)
    outcomes.update(zip(positions, done, strict=True))
    report = ConvertReport(
        src=str(src),
        out=str(out),
        windows=tuple(w.name for w in windows),
        size=size,
        shard=f"{shard.index}/{shard.count}",
        outcomes=tuple(outcomes[i] for i in range(len(mine))),
        head_only=head_only,
    )
    for failure in report.failures:
        log.error("%s: %s", failure.source, failure.error)
    return report
