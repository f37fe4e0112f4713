"""``hemo explain --model M INPUT... [--method M] [--label L] [--out DIR] [--json]``: heatmaps.

Each scan goes through the model card's one preprocessing path (``Predictor.prepare``), is
explained with a Grad-CAM-family method on the card's target layer, and the heatmap is drawn over
the model-input view of the slice (its first channel, e.g. the brain window) into
``<out>/<stem>_<method>.png``. ``peak`` is the heatmap's maximum in the pixels of that view
(the model input, ``size`` x ``size``), so it can be read straight off the written picture;
``null`` for a flat map (no maximum). ``outside_range`` says, as ``hemo predict`` does for a lone
slice, why a scan lies outside the slices the model was trained on (``null`` when inside).

Exit status: 0 when every input was explained, 1 when any failed, 2 when the model or an option is
bad.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Registered CAM methods (kept literal so the parser does not import TensorFlow; a test checks
#: that it equals ``sorted(hemo.cam.METHODS)``).
METHOD_CHOICES = ("gradcam", "gradcam++", "hirescam")
DEFAULT_METHOD = "gradcam"
DEFAULT_LABEL = "any"
DEFAULT_OUT = Path("explanations")
DEFAULT_ALPHA = 0.4
DEFAULT_COLORMAP = "jet"
#: Width of the path column in the text table.
PATH_WIDTH = 48


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``explain`` subcommand."""
    parser = subparsers.add_parser(
        "explain",
        help="Grad-CAM heatmaps over DICOM/PNG/JPEG files, series folders and zips",
        description="Explain the model's verdict on each scan with a class activation map "
        "(Grad-CAM, Grad-CAM++ or HiResCAM) and write the heatmap over the slice as the model "
        "sees it (its input size, after the head crop when the model crops) as a PNG; the "
        "peak is in those pixels. Exit 1 when any input failed. Research tool, not a medical "
        "device.",
    )
    parser.add_argument("--model", required=True, type=Path, help="models/NAME.keras (card beside)")
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="files, folders or zips")
    parser.add_argument("--method", choices=METHOD_CHOICES, default=DEFAULT_METHOD)
    parser.add_argument(
        "--label", default=DEFAULT_LABEL, help="output to explain: 'any' or a subtype the model has"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help=f"folder for the overlay PNGs, created (default: ./{DEFAULT_OUT}/ in the current "
        "folder)",
    )
    parser.add_argument("--alpha", type=float, default=DEFAULT_ALPHA, help="heatmap opacity 0-1")
    parser.add_argument(
        "--colormap", default=DEFAULT_COLORMAP, help="jet, turbo, inferno, viridis, hot, ..."
    )
    parser.add_argument(
        "--contour", type=float, default=None, metavar="LEVEL", help="outline the map at LEVEL"
    )
    parser.add_argument("--box", action="store_true", help="box the region above the level")
    parser.add_argument("--json", action="store_true", help="print JSON on stdout only")
    parser.set_defaults(func=run)


def overlay_name(source: str, method: str, taken: set[str], frame: int | None = None) -> str:
    """``<stem>_<method>.png`` for an input, made unique among ``taken`` (which it extends).

    Args:
        source: Input name, e.g. ``dir/ID_1.dcm`` or ``series.zip/IM0001``.
        method: Method name.
        taken: Names already used in this run.
        frame: The frame number of a multi-frame DICOM's slice: ``<stem>_frame0007_<method>.png``.

    Returns:
        A file name (no folder).
    """
    base = Path(source.replace("\\", "/")).name
    gz = ".nii.gz"
    stem = (base[: -len(gz)] if base.lower().endswith(gz) else Path(base).stem) or "scan"
    if frame is not None:
        stem = f"{stem}_frame{frame:04d}"
    name = f"{stem}_{method}.png"
    counter = 2
    while name in taken:
        name = f"{stem}_{counter}_{method}.png"
        counter += 1
    taken.add(name)
    return name


def _check_options(args: argparse.Namespace, labels: tuple[str, ...]) -> None:
    from hemo.cam.overlay import COLORMAPS
    from hemo.errors import ConfigError

    if not 0.0 <= args.alpha <= 1.0:
        raise ConfigError(f"--alpha must be in [0, 1], got {args.alpha}")
    if args.contour is not None and not 0.0 <= args.contour <= 1.0:
        raise ConfigError(f"--contour must be in [0, 1], got {args.contour}")
    if args.colormap not in COLORMAPS:
        raise ConfigError(
            f"--colormap {args.colormap!r} is unknown; choose one of {', '.join(sorted(COLORMAPS))}"
        )
    if args.label not in labels:
        raise ConfigError(
            f"--label {args.label!r} is not an output of this model; outputs: {', '.join(labels)}"
        )


def explain_inputs(args: argparse.Namespace) -> dict[str, Any]:
    """Explain every input; returns the ``--json`` document (``results`` in input order)."""
    from hemo.modelfile import check_model_file

    check_model_file(args.model)  # a wrong --model is named before TensorFlow starts

    from hemo.cam.overlay import overlay
    from hemo.cam.registry import get_method
    from hemo.config import NOTICE
    from hemo.dashboard import synthetic_training_message
    from hemo.errors import ConfigError, HemoError
    from hemo.io import iter_scans
    from hemo.predict import Predictor
    from hemo.progress import progress
    from hemo.reports import png_bytes

    with Predictor(args.model) as predictor:
        card = predictor.card
        _check_options(args, tuple(card.labels))
        try:
            args.out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"--out {args.out}: cannot create the folder ({exc})") from exc
        explainer = get_method(args.method)(
            predictor.model, layer=card.cam_layer or None, labels=card.labels
        )
        results: list[dict[str, Any]] = []
        taken: set[str] = set()
        with progress(None, "explain", "scan") as advance:
            for scan_result in iter_scans(args.inputs):
                advance(1)  # scans as they are taken up
                if scan_result.error is not None:
                    log.error("%s", scan_result.error)
                    results.append({"path": scan_result.name, "error": str(scan_result.error)})
                    continue
                start = time.perf_counter()
                try:
                    x = predictor.prepare(scan_result.scan)
                except HemoError as exc:
                    log.error("%s", exc)
                    results.append({"path": scan_result.name, "error": str(exc)})
                    continue
                # Explain on the exact model input; draw over its first channel
                (result,) = explainer(x, label=args.label)
                picture = overlay(
                    x[..., 0],
                    result.heatmap,
                    alpha=args.alpha,
                    colormap=args.colormap,
                    contour_level=args.contour,
                    box=args.box,
                )
                frame = getattr(scan_result.scan, "frame", None)
                path = args.out / overlay_name(scan_result.name, args.method, taken, frame)
                try:  # with the research-tool notice in its Disclaimer chunk, as on the page
                    path.write_bytes(png_bytes(picture))
                except OSError as exc:
                    raise ConfigError(
                        f"--out {args.out}: cannot write {path.name} ({exc.strerror or exc})"
                    ) from exc
                row, col = result.peak
                decides = result.label == predictor.head_label
                probability = result.probability
                if decides and predictor.density is not None:  # the card's blend, as predict's
                    probability = float(
                        predictor.forward(x[None])[0, predictor.labels.index(result.label)]
                    )
                outside = _outside_range(predictor, scan_result.scan)
                results.append(
                    {
                        "path": scan_result.name,
                        "frame": frame,
                        "probability": probability,
                        # The verdict at the card's threshold, only for the output it applies to
                        "positive": probability >= predictor.threshold if decides else None,
                        "uncertain": predictor.refers(probability) if decides else None,
                        "logit": result.logit,
                        "label": result.label,
                        "method": result.method,
                        # a flat map has no maximum: no peak rather than a corner
                        "peak": None if result.flat else {"row": row, "col": col},
                        "flat": result.flat,
                        # as hemo predict says for a lone slice: the reason, or null in range
                        "outside_range": outside,
                        "overlay": str(path),
                        "seconds": time.perf_counter() - start,
                    }
                )
    return {
        "notice": NOTICE,
        "model": card.name,
        "method": args.method,
        "label": args.label,
        "layer": explainer.layer,
        "input_size": card.input_spec.size,
        "threshold": predictor.threshold,
        "referral": None if predictor.referral is None else predictor.referral.to_dict(),
        # as hemo predict: what holds for every call (a model trained only on phantoms)
        "note": synthetic_training_message(card),
        "results": results,
    }


def _short(path: str) -> str:
    return path if len(path) <= PATH_WIDTH else "..." + path[-(PATH_WIDTH - 3) :]


def _outside_range(predictor: Any, scan: Any) -> str | None:
    """Why a scan lies outside the model's range, by the rule hemo predict applies to a lone
    slice (a localizer or reformat; the soft-tissue share of the card's slice range)."""
    from hemo.anatomy import plane_reason, scan_anatomy

    reason = plane_reason(scan)
    if reason is None and predictor.slice_range is not None:
        reason = predictor.slice_range.reason(scan_anatomy(scan))
    return reason


def _verdict(entry: dict[str, Any]) -> str:
    """The table's verdict: as hemo predict prints it; ``-`` for an output the threshold does
    not apply to (a subtype explained with --label)."""
    from hemo.reports import NO_VERDICT, verdict

    if entry.get("positive") is None:
        return "-"
    return NO_VERDICT if entry.get("outside_range") else verdict(entry["positive"])


def _text(data: dict[str, Any]) -> str:
    """A human-readable table of the results."""
    from hemo.config import NOTICE

    lines = [
        NOTICE,
        f"model {data['model']}  {data['method']} on {data['layer']}  label {data['label']}",
    ]
    if data.get("note"):
        lines.append(f"note: {data['note']}")
    lines.append(f"{'input':<{PATH_WIDTH}}  {'P':>6}  {'verdict':<13}  {'peak':>9}  overlay")
    for entry in data["results"]:
        if "error" in entry:
            lines.append(f"{_short(entry['path']):<{PATH_WIDTH}}  error: {entry['error']}")
            continue
        peak = "flat" if entry["flat"] else f"{entry['peak']['row']},{entry['peak']['col']}"
        name = entry["path"] if entry.get("frame") is None else f"{entry['path']}#{entry['frame']}"
        mark = "  [uncertain: refer]" if entry.get("uncertain") else ""
        if entry.get("outside_range"):
            mark += "  [outside the model's range]"
        lines.append(
            f"{_short(name):<{PATH_WIDTH}}  {entry['probability']:>6.3f}  "
            f"{_verdict(entry):<13}  {peak:>9}  {entry['overlay']}{mark}"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Explain every input, write overlays, print JSON or a table; exit 1 if any failed."""
    from hemo.cli import EXIT_PARTIAL, emit_json, printable_data

    data = explain_inputs(args)
    if args.json:
        emit_json(data)
    else:
        print(_text(printable_data(data)))
    if not data["results"]:
        log.error("no scan found in the inputs")
        return EXIT_PARTIAL
    return EXIT_PARTIAL if any("error" in entry for entry in data["results"]) else 0


__all__ = ["METHOD_CHOICES", "explain_inputs", "overlay_name", "register", "run"]
