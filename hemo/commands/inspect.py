"""``hemo inspect FILE [--json]``: PHI-free metadata and intensity statistics of one scan.

For a DICOM: the whitelisted metadata (:func:`hemo.dicom.phi_free_metadata`), geometry and HU
statistics (min, max, mean, 1st and 99th percentiles). A multi-frame DICOM (or a NIfTI volume,
``kind`` ``nifti``, its axial slices in place of frames) is described by its first frame, plus
``frames`` (how many), ``frame_z_mm`` (each frame's position, in file order; for a volume
inferior to superior), ``frame_errors`` (frames that could not be decoded) and HU statistics
over every frame (over every ``hu_sampled_every``-th pixel when the frames hold more than
:data:`MAX_STAT_PIXELS`). For a PNG/JPEG/TIFF: kind, decoded shape, bit depth and
display-intensity statistics in [0, 1]. No UIDs, names, IDs or dates are printed.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

#: Percentiles reported besides min, max and mean.
PERCENTILES = (1.0, 99.0)
#: Longer lists (a volume's frame positions) are summed up in the text output.
TEXT_LIST_ITEMS = 8
#: Most HU values a multi-frame file's statistics hold in memory (256 MB of float32).
MAX_STAT_PIXELS = 64 * 1024 * 1024


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``inspect`` subcommand."""
    parser = subparsers.add_parser(
        "inspect",
        help="PHI-free metadata and HU statistics of one scan",
        description="Print PHI-free metadata and HU statistics of a DICOM slice, or the size, "
        "kind and intensity statistics of a PNG/JPEG/TIFF. The kind is read from the bytes.",
    )
    parser.add_argument("file", help="a DICOM (any extension or none), PNG, JPEG or TIFF file")
    parser.add_argument("--json", action="store_true", help="print JSON on stdout only")
    parser.set_defaults(func=run)


def _stats(values: Any) -> dict[str, float]:
    import numpy as np

    low, high = np.percentile(values, PERCENTILES)
    return {
        "min": float(values.min()),
        "max": float(values.max()),
        "mean": float(values.mean(dtype=np.float64)),
        f"p{PERCENTILES[0]:g}": float(low),
        f"p{PERCENTILES[1]:g}": float(high),
    }


def describe(scan: Any) -> dict[str, Any]:
    """The report of one scan as a JSON-friendly dict (no PHI)."""
    from hemo.dicom import CTSlice

    if isinstance(scan, CTSlice):
        window = scan.default_window
        return {
            "path": scan.source,
            "kind": "nifti"
            if str(scan.metadata.get("format", "")).startswith("NIfTI")
            else "dicom",
            "modality": scan.modality,
            "shape": list(scan.hu.shape),
            "pixel_spacing_mm": scan.pixel_spacing_mm,
            "slice_thickness_mm": scan.slice_thickness_mm,
            "slice_z_mm": scan.slice_z_mm,
            "default_window": None
            if window is None
            else {"center_hu": window.center_hu, "width_hu": window.width_hu},
            "hu": _stats(scan.hu),
            "metadata": dict(scan.metadata),
        }
    return {
        "path": scan.source,
        "kind": scan.kind,
        "shape": list(scan.pixels.shape),
        "original_shape": list(scan.original_shape),
        "bit_depth": scan.bit_depth,
        "intensity": _stats(scan.pixels),
    }


def describe_frames(frames: list[Any], errors: list[str]) -> dict[str, Any]:
    """The report of a multi-frame DICOM: its first frame's, with every frame's statistics.

    Args:
        frames: The frames that were read (``CTSlice`` with ``frame`` set), in file order.
        errors: Messages of the frames that could not be decoded.
    """
    import numpy as np

    report = describe(frames[0])
    pixels = sum(f.hu.size for f in frames)
    step = 1
    while pixels / (step * step) > MAX_STAT_PIXELS:
        step += 1
    values = np.concatenate([f.hu[::step, ::step].ravel() for f in frames])
    report["slice_z_mm"] = None
    report["frames"] = len(frames) + len(errors)
    report["frame_z_mm"] = [f.slice_z_mm for f in frames]
    report["frame_errors"] = errors
    report["hu"] = _stats(values)
    if step > 1:
        report["hu_sampled_every"] = step
    return report


def _text(report: dict[str, Any]) -> str:
    lines = [f"{report['path']}: {report['kind']}"]
    for key, value in report.items():
        if key in ("path", "kind", "metadata"):
            continue
        if isinstance(value, dict):
            value = ", ".join(
                f"{k} {v:.6g}" if isinstance(v, float) else f"{k} {v}" for k, v in value.items()
            )
        elif isinstance(value, list) and len(value) > TEXT_LIST_ITEMS:  # JSON keeps them all
            shown = [f"{v:.6g}" if isinstance(v, float) else str(v) for v in (value[0], value[-1])]
            value = f"{shown[0]} .. {shown[1]} ({len(value)} values; --json lists them)"
        lines.append(f"  {key}: {value}")
    for key, value in report.get("metadata", {}).items():
        lines.append(f"  {key}: {value}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Read the file and print its report; on a bad file, one error (JSON or a line) and exit 2."""
    from hemo.cli import EXIT_ERROR, emit_json, printable, printable_data
    from hemo.errors import HemoError

    try:
        report = _report(args.file)
    except HemoError as exc:
        if not args.json:
            raise
        emit_json({"path": args.file, "error": str(exc)})
        print(f"hemo: error: {printable(str(exc))}", file=sys.stderr)
        return EXIT_ERROR
    if args.json:
        emit_json(report)
    else:
        print(_text(printable_data(report)))
    return 0


def _report(path: str) -> dict[str, Any]:
    """Read ``path`` (every frame of a multi-frame DICOM) and describe it; raises its error."""
    from pathlib import Path

    from hemo.dicom import read_dicom_frames
    from hemo.errors import DicomError, InputError
    from hemo.images import SNIFF_BYTES, sniff_kind
    from hemo.io import VOLUME_KINDS, read_scan
    from hemo.nifti import read_nifti
    from hemo.sources import read_head

    if Path(path).is_dir():
        raise InputError(
            "is a folder; hemo inspect takes one file (for a folder use hemo predict or hemo index)",
            path,
        )
    kind = sniff_kind(read_head(path, SNIFF_BYTES))
    if kind in VOLUME_KINDS:
        slices = list(read_nifti(path))
        return describe(slices[0]) if len(slices) == 1 else describe_frames(slices, [])
    if kind != "dicom":
        return describe(read_scan(path))  # an image; a zip or unknown bytes raise
    frames, errors = [], []
    for item in read_dicom_frames(path):
        if isinstance(item, Exception):
            errors.append(item)
        else:
            frames.append(item)
    if not frames and len(errors) == 1:
        raise errors[0]  # one slice: its own error, which names the file
    if not frames:
        raise DicomError(f"none of its {len(errors)} frames could be decoded: {errors[0]}", path)
    if frames[0].frame is None:
        return describe(frames[0])
    return describe_frames(frames, [str(error) for error in errors])


__all__ = ["describe", "describe_frames", "register", "run"]
