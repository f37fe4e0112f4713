"""``hemo predict --model M INPUT... [--json] [--batch-size N]``: verdicts on scans.

Inputs are DICOM files (any extension or none), series folders, zips and PNG/JPEG/TIFF files.
One result per scan, in input order (folder files and zip members sorted by name; members named
``archive.zip/member``); a scan that cannot be read or preprocessed gets an ``error`` entry and
the others are still predicted. DICOM slices are also pooled per series (``studies``). The JSON
carries no patient data: paths, probabilities, UIDs and slice positions only.

With ``--training-lookalikes`` each result also says whether the scan looks like one of the
images the model was trained on (``training_lookalike``: the training image and the correlation,
or null; :mod:`hemo.lookalike`), when the card's training folder is on this machine: a result on
such a scan is no test of the model.

Exit status: 0 when every input was predicted, 1 when any failed, 2 when the model or an option
is bad.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Width of the path column in the text table.
PATH_WIDTH = 48
#: Images per model call (as ``hemo.predict.DEFAULT_BATCH_SIZE``; not imported to keep startup fast).
DEFAULT_BATCH_SIZE = 32


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``predict`` subcommand."""
    parser = subparsers.add_parser(
        "predict",
        help="hemorrhage probability of DICOM/PNG/JPEG files, series folders and zips",
        description="Predict P(hemorrhage) (and subtype probabilities where the model has them) "
        "for each scan, with the verdict at the model card's threshold, and per-series results "
        "(maximum over the slices in the model's range). Exit 1 when any input failed. "
        "Research tool, not a medical device.",
    )
    parser.add_argument("--model", required=True, type=Path, help="models/NAME.keras (card beside)")
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="files, folders or zips")
    parser.add_argument("--json", action="store_true", help="print JSON on stdout only")
    parser.add_argument(
        "--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="images per model call"
    )
    parser.add_argument(
        "--training-lookalikes",
        action="store_true",
        help="also say, per scan, whether it looks like one of the model's training images "
        "(the same picture at another size, a neighbouring slice), when the card's training "
        "folder is on this machine",
    )
    parser.set_defaults(func=run)


def training_lookalikes(
    card: Any, inputs: list[str]
) -> dict[tuple[str, int | None], dict[str, Any] | None] | None:
    """``{(result path, frame): {"image", "similarity"} or None}`` for every readable scan of
    ``inputs`` (frame ``None`` unless the scan is a frame of a multi-frame DICOM), or ``None``
    when the card's training images are not on this machine."""
    from hemo.evaluate import training_reference
    from hemo.io import iter_scans

    reference = training_reference(card)
    if reference is None:
        log.warning(
            "--training-lookalikes: the training folder of %s (%s) is not on this machine; "
            "nothing to compare with",
            card.name,
            (card.training or {}).get("data", "not in its card"),
        )
        return None
    found: dict[tuple[str, int | None], dict[str, Any] | None] = {}
    for item in iter_scans(inputs):
        if item.scan is None:
            continue
        match = reference.match(item.scan)
        found[(item.name, getattr(item.scan, "frame", None))] = (
            None if match is None else {"image": match[0], "similarity": round(match[1], 4)}
        )
    return found


def payload(
    model_name: str,
    threshold: float,
    batch: Any,
    referral: Any | None = None,
    note: str | None = None,
) -> dict[str, Any]:
    """The ``--json`` document of one prediction batch (``referral``: the card's band;
    ``note``: what the card says about every call, e.g. a model trained on phantoms only)."""
    from hemo.config import NOTICE
    from hemo.predict import result_to_dict

    return {
        "notice": NOTICE,
        "model": model_name,
        "threshold": threshold,
        "referral": None if referral is None else referral.to_dict(),
        "note": note,
        "results": [result_to_dict(r) for r in batch.results],
        "studies": [s.to_dict() for s in batch.studies],
    }


def _short(path: str) -> str:
    return path if len(path) <= PATH_WIDTH else "..." + path[-(PATH_WIDTH - 3) :]


def _text(data: dict[str, Any]) -> str:
    """A human-readable table of the results and studies."""
    from hemo.config import NOTICE

    lines = [NOTICE, f"model {data['model']}  threshold {data['threshold']:.3f}"]
    if data.get("note"):
        lines.append(f"note: {data['note']}")
    band = data.get("referral")
    if band:
        lines.append(
            f"calls with P(any) between {band['low']:.3f} and {band['high']:.3f} are uncertain: "
            "refer them to a reader"
        )
    lines.append("")
    lines.append(f"{'input':<{PATH_WIDTH}}  {'P(any)':>7}  verdict")
    for entry in data["results"]:
        if "error" in entry:
            lines.append(
                f"{_short(entry['path']):<{PATH_WIDTH}}  {'-':>7}  error: {entry['error']}"
            )
            continue
        outside = entry.get("outside_range")
        # outside the range the probability is not a finding: no verdict, nothing to refer
        verdict = "none" if outside else "POSITIVE" if entry["positive"] else "negative"
        extra = [f"{k} {v:.3f}" for k, v in entry["probabilities"].items() if k != "any"]
        suffix = f"  ({', '.join(extra)})" if extra else ""
        if entry.get("uncertain") and not outside:
            suffix += "  [uncertain: refer]"
        if outside:
            suffix += "  [outside the model's range]"
        if entry.get("training_lookalike"):
            seen = entry["training_lookalike"]
            suffix += f"  [looks like training image {Path(seen['image']).name}: no test]"
        name = entry["path"] if entry.get("frame") is None else f"{entry['path']}#{entry['frame']}"
        lines.append(
            f"{_short(name):<{PATH_WIDTH}}  {entry['probability']:>7.3f}  {verdict}{suffix}"
        )
    for study in data["studies"]:
        lines.append("")
        if study["slices_in_range"] == 0:
            lines.append(
                f"series of {study['n_slices']} slice(s): no verdict, no slice is in the model's "
                f"range; P(any) max over every slice {study['probability_all_slices']:.3f} is not "
                f"a finding"
            )
            if study["note"]:
                lines.append(f"  note: {study['note']}")
            continue
        verdict = "POSITIVE" if study["positive"] else "negative"
        lines.append(
            f"series of {study['n_slices']} slice(s): P(any) max {study['probability']:.3f} "
            f"(top-{study['top_k']} mean {study['top_k_mean']:.3f}) {verdict}"
            f"{' (uncertain: refer)' if study.get('uncertain') else ''}; most suspicious "
            f"slice {study['most_suspicious_index']}: {_short(study['most_suspicious_source'])}"
            + (
                ""
                if study.get("most_suspicious_frame") is None
                else f" frame {study['most_suspicious_frame']}"
            )
        )
        outside = study["n_slices"] - (study["slices_in_range"] or study["n_slices"])
        if outside and study["slices_in_range"]:
            lines.append(
                f"  {outside} slice(s) outside the model's range (skull base, vertex) left out; "
                f"P(any) max over every slice {study['probability_all_slices']:.3f}"
            )
        if study["note"]:
            lines.append(f"  note: {study['note']}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Load the model once, predict every input, print JSON or a table; exit 1 if any failed."""
    from hemo.cli import EXIT_PARTIAL, emit_json, printable_data
    from hemo.dashboard import synthetic_training_message
    from hemo.errors import ConfigError
    from hemo.modelfile import check_model_file

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {args.batch_size}")
    check_model_file(args.model)  # a wrong --model is named before TensorFlow starts
    from hemo.predict import Predictor
    from hemo.progress import progress

    with Predictor(args.model, batch_size=args.batch_size) as predictor:
        with progress(None, "predict", "scan") as advance:
            batch = predictor.run(args.inputs, on_scan=advance)
        note = synthetic_training_message(predictor.card)
        data = payload(predictor.card.name, predictor.threshold, batch, predictor.referral, note)
        if args.training_lookalikes:
            found = training_lookalikes(predictor.card, args.inputs) or {}
            for entry in data["results"]:
                if "error" not in entry:
                    entry["training_lookalike"] = found.get((entry["path"], entry["frame"]))
    for result in batch.results:
        if result.error is not None:
            log.error("%s", result.error)
    if args.json:
        emit_json(data)
    else:
        print(_text(printable_data(data)))
    if not batch.results:
        log.error("no scan found in the inputs")
        return EXIT_PARTIAL
    return EXIT_PARTIAL if batch.n_failed else 0


__all__ = ["payload", "register", "run"]
