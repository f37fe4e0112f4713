"""``hemo inspect FILE [--json]``: PHI-free metadata and intensity statistics of one scan.

For a DICOM: the whitelisted metadata (:func:`hemo.dicom.phi_free_metadata`), geometry and HU
statistics (min, max, mean, 1st and 99th percentiles). For a PNG/JPEG/TIFF: kind, decoded shape,
bit depth and display-intensity statistics in [0, 1]. No UIDs, names, IDs or dates are printed.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

#: Percentiles reported besides min, max and mean.
PERCENTILES = (1.0, 99.0)


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
            "kind": "dicom",
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


def _text(report: dict[str, Any]) -> str:
    lines = [f"{report['path']}: {report['kind']}"]
    for key, value in report.items():
        if key in ("path", "kind", "metadata"):
            continue
        if isinstance(value, dict):
            value = ", ".join(
                f"{k} {v:.6g}" if isinstance(v, float) else f"{k} {v}" for k, v in value.items()
            )
        lines.append(f"  {key}: {value}")
    for key, value in report.get("metadata", {}).items():
        lines.append(f"  {key}: {value}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Read the file and print its report; on a bad file, one error (JSON or a line) and exit 2."""
    from hemo.cli import EXIT_ERROR, emit_json
    from hemo.errors import HemoError
    from hemo.io import read_scan

    try:
        report = describe(read_scan(args.file))
    except HemoError as exc:
        if not args.json:
            raise
        emit_json({"path": args.file, "error": str(exc)})
        print(f"hemo: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if args.json:
        emit_json(report)
    else:
        print(_text(report))
    return 0


__all__ = ["describe", "register", "run"]
