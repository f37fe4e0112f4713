"""Where does a model call slices of a real hemorrhage-negative series positive?

Real series hold slices the 140 Kaggle images never show: the skull base (orbits, sinuses,
petrous bones) and the top of the head, where the skull is cut tangentially and fills the slice
with bone. A model that has only seen mid-brain slices may call those positive, and then a whole
negative series is called positive. This script predicts every slice of a series (default: the
real CQ500-CT-0 series in ``../shared/data/cq500``, 238 thin slices, negative by majority vote of
its three readers) with each given model and reports the fraction of slices called positive at
the model's threshold: over the whole series, in the lowest and highest ``--edge-mm`` of it, and
in between. ``--slab-mm 5`` first averages each thin slice with its neighbours into a 5 mm slab,
the slice thickness of the training images.

Fewer positives on a negative series is only half the measure: a model that leans negative on
real DICOM everywhere also gets there. So each model also predicts a real hemorrhage-positive
slice (``--positive``, default pydicom-data's ``693_UNCR.dcm``, CQ500-CT-310) and the table says
how many of a run's fold models call it positive at the threshold.

A model whose card has a slice range (:mod:`hemo.anatomy`; fold models written before it use
the range of ``--range-model``, by default the shipped real-scan model, trained on the same
images) also gets: the share of slices inside its range, the positive fraction among those, and
the study verdict a series gets from them (``study_positive``: the highest in-range slice at or
above the threshold) beside the verdict over every slice (``study_positive_all``).

Models are shipped ``.keras`` files (``--models``, each at its card's threshold) or the fold
models of finished ``hemo crossval`` runs (``--runs``, each at that run's pooled out-of-fold
threshold; the fractions are averaged over the folds). None of them saw the series.

Usage::

    python bench/series_negatives.py                  # the shipped models/headct_real.keras
    python bench/series_negatives.py --runs headct_real_pretrained_large,headct_real_pretrained_edge

Prints a table on stderr and, last, one JSON line on stdout with the fractions per model and
``positive_fraction_ratio`` (each model's whole-series fraction over the first model's).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

log = logging.getLogger("bench.series_negatives")

PROJECT_DIR = Path(__file__).resolve().parent.parent
DEFAULT_SERIES = PROJECT_DIR.parent / "shared" / "data" / "cq500" / "CQ500-CT-0"
DEFAULT_EDGE_MM = 25.0


def read_series(folder: Path):
    """``(scans, z_mm)`` of every DICOM slice in ``folder``, ordered by slice position."""
    from hemo.dicom import read_dicom

    slices = []
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        ct = read_dicom(path)
        slices.append((float(ct.slice_z_mm), ct))
    if not slices:
        raise SystemExit(f"{folder}: no DICOM slices")
    slices.sort(key=lambda item: item[0])
    return [ct for _, ct in slices], [z for z, _ in slices]


def thick_slabs(scans, z_mm, slab_mm: float):
    """Each slice replaced by the mean HU of the slices within ``slab_mm / 2`` of it: a thin
    series seen as the thick slices the models were trained on (``slab_mm`` 0: unchanged)."""
    import dataclasses

    import numpy as np

    if slab_mm <= 0:
        return scans
    z = np.asarray(z_mm)
    out = []
    for k, ct in enumerate(scans):
        near = np.nonzero(np.abs(z - z[k]) <= slab_mm / 2)[0]
        hu = np.mean([scans[i].hu for i in near], axis=0).astype(np.float32)
        hu.setflags(write=False)
        out.append(dataclasses.replace(ct, hu=hu))
    return out


def fractions(probs, z_mm, threshold: float, edge_mm: float, in_range=None) -> dict[str, float]:
    """Fraction of slices at or above ``threshold``: all, lowest/highest ``edge_mm``, middle;
    with ``in_range`` (bool per slice) also the in-range share, their positive fraction and
    the study verdicts with and without the range."""
    import numpy as np

    p = np.asarray(probs)
    z = np.asarray(z_mm)
    low = z <= z.min() + edge_mm
    high = z >= z.max() - edge_mm
    middle = ~(low | high)
    positive = p >= threshold
    out = {
        "all": float(positive.mean()),
        "skull_base": float(positive[low].mean()),
        "vertex": float(positive[high].mean()),
        "middle": float(positive[middle].mean()) if middle.any() else None,  # JSON null
        "study_positive_all": float(positive.any()),
    }
    if in_range is not None:
        inside = np.asarray(in_range, dtype=bool)
        pooled = inside if inside.any() else np.ones_like(inside)
        out["in_range"] = float(inside.mean())
        out["in_range_positive"] = float(positive[inside].mean()) if inside.any() else 0.0
        out["study_positive"] = float(positive[pooled].any())
    return out


def model_fractions(
    paths_and_thresholds, scans, z_mm, edge_mm: float, positive=None, fallback_range=None
) -> tuple[dict[str, float], dict[str, object] | None]:
    """Mean over the given models of :func:`fractions`, and (with ``positive``, a known
    hemorrhage slice) each model's P(any) on it and how many call it positive. A model whose
    card has no slice range uses ``fallback_range`` (none: no in-range figures)."""
    import numpy as np

    from hemo.anatomy import scan_anatomy
    from hemo.model import load_model, merge_ensemble
    from hemo.preprocess import to_model_input

    anatomies = [scan_anatomy(ct) for ct in scans]

    inputs: dict[object, np.ndarray] = {}
    rows = []
    on_positive: list[float] = []
    called = 0
    for path, threshold in paths_and_thresholds:
        if isinstance(path, tuple):
            # One fold of an ensemble cross-validation: its members merged as --export does
            members = [load_model(member) for member in path]
            card = members[0][1]
            model = merge_ensemble([m for m, _ in members], [c for _, c in members])
        else:
            model, card = load_model(path)
        spec = card.input_spec
        if spec not in inputs:
            inputs[spec] = np.stack([to_model_input(ct, spec) for ct in scans])
        probs = np.asarray(model.predict(inputs[spec], batch_size=32, verbose=0))
        any_column = list(card.labels).index("any")
        blend = card.parse_density()  # a card that blends density features: as Predictor does
        if blend is not None:
            probs[:, any_column] = blend.blend(probs[:, any_column], inputs[spec][..., 0])
        cut = card.threshold if threshold is None else threshold
        slice_range = card.parse_slice_range() or fallback_range
        in_range = (
            None if slice_range is None else [r is None for r in slice_range.reasons(anatomies)]
        )
        rows.append(fractions(probs[:, any_column], z_mm, cut, edge_mm, in_range))
        if positive is not None:
            x = to_model_input(positive, spec)[None]
            p = float(np.asarray(model.predict(x, verbose=0))[0, any_column])
            if blend is not None:
                p = float(blend.blend([p], x[..., 0])[0])
            on_positive.append(p)
            called += p >= cut
    keys = [key for key in rows[0] if all(key in r for r in rows)]
    means = {
        key: None if any(r[key] is None for r in rows) else float(np.mean([r[key] for r in rows]))
        for key in keys
    }
    if positive is None:
        return means, None
    return means, {"called": int(called), "models": len(on_positive), "p_any": on_positive}


def read_positive(name: str):
    """The known hemorrhage slice: a DICOM file, or the name of a pydicom test file; None for
    ''."""
    from pydicom.data import get_testdata_file

    from hemo.dicom import read_dicom

    if not name:
        return None
    path = Path(name)
    if not path.is_file():
        found = get_testdata_file(name, download=False)
        if found is None:
            raise SystemExit(f"--positive {name}: no such file, nor a pydicom test file")
        path = Path(found)
    return read_dicom(path)


def run_models(name: str, runs_dir: Path) -> list[tuple[Path | tuple[Path, ...], float]]:
    """Fold models of crossval run ``name`` with the run's pooled OOF threshold (for an
    ensemble cross-validation, each fold's member models, merged when they are predicted)."""
    report = json.loads((runs_dir / f"{name}-crossval" / "crossval.json").read_text())
    if report.get("density"):
        raise SystemExit(
            f"--runs {name}: its threshold is that of a blend with density features fitted per "
            "fold, which the fold models alone do not give; run it on the exported model "
            "(--models) or on a cross-validation without density"
        )
    threshold = float(report["threshold"])
    # An ensemble cross-validation (hemo crossval --seeds) names each fold's member runs
    models = []
    for fold in report["folds"]:
        paths = tuple(runs_dir / run / "model.keras" for run in fold["run"].split(","))
        models.append((paths[0] if len(paths) == 1 else paths, threshold))
    return models


def main(argv: list[str] | None = None) -> int:
    """Predict the series with every model and report where it calls slices positive."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="", help="comma-separated .keras files")
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="one threshold for every --models file instead of its card's (e.g. to compare "
        "models trained on every image, whose cards' thresholds are chosen in-sample)",
    )
    parser.add_argument("--runs", default="", help="comma-separated crossval run names")
    parser.add_argument("--runs-dir", type=Path, default=PROJECT_DIR / "runs")
    parser.add_argument("--series", type=Path, default=DEFAULT_SERIES)
    parser.add_argument("--edge-mm", type=float, default=DEFAULT_EDGE_MM)
    parser.add_argument(
        "--range-model",
        default=str(PROJECT_DIR / "models" / "headct_real.keras"),
        help="slice range for models whose card has none ('' for none)",
    )
    parser.add_argument(
        "--positive",
        default="693_UNCR.dcm",
        help="a real hemorrhage slice: a file, or a pydicom test file name; '' to skip",
    )
    parser.add_argument(
        "--slab-mm",
        type=float,
        default=0.0,
        help="average each slice with its neighbours within this thickness first (0: off)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    groups: dict[str, list[tuple[Path, float | None]]] = {}
    for model in filter(None, args.models.split(",")):
        groups[model] = [(Path(model), args.threshold)]
    for name in filter(None, args.runs.split(",")):
        groups[name] = run_models(name, args.runs_dir)
    if not groups:
        # On its own: the shipped model
        default = PROJECT_DIR / "models" / "headct_real.keras"
        groups[str(default)] = [(default, None)]
    if not args.series.is_dir():
        parser.error(f"--series {args.series}: not a folder (is ../shared present?)")
    scans, z_mm = read_series(args.series)
    scans = thick_slabs(scans, z_mm, args.slab_mm)
    log.info("%s: %d slices, %.1f to %.1f mm", args.series.name, len(scans), z_mm[0], z_mm[-1])
    positive = read_positive(args.positive)
    fallback = None
    if args.range_model:
        from hemo.model import read_card

        fallback = read_card(args.range_model).parse_slice_range()
    results, known = {}, {}
    for name, models in groups.items():
        results[name], known[name] = model_fractions(
            models, scans, z_mm, args.edge_mm, positive, fallback
        )
    log.info(
        "%-40s %6s %10s %7s %7s %8s %8s %9s %9s",
        "model",
        "all",
        "skull base",
        "middle",
        "vertex",
        "bleed",
        "in range",
        "in-r pos",
        "study",
    )
    for name, r in results.items():
        bleed = f"{known[name]['called']}/{known[name]['models']}" if known[name] else "-"
        log.info(
            "%-40s %6.3f %10.3f %7s %7.3f %8s %8s %9s %9s",
            name,
            r["all"],
            r["skull_base"],
            _cell(r["middle"]),
            r["vertex"],
            bleed,
            _cell(r.get("in_range")),
            _cell(r.get("in_range_positive")),
            f"{_cell(r.get('study_positive'))}/{r['study_positive_all']:.2f}",
        )
    first = next(iter(results.values()))["all"]
    summary = {
        "series": args.series.name,
        "slices": len(scans),
        "edge_mm": args.edge_mm,
        "slab_mm": args.slab_mm,
        "positive_fractions": results,
        "known_positive": {"file": args.positive or None, "models": known if positive else None},
        "positive_fraction_ratio": {
            name: (r["all"] / first if first > 0 else None) for name, r in results.items()
        },
    }
    print(json.dumps(summary, allow_nan=False))
    return 0


def _cell(value: float | None) -> str:
    """A table cell: three decimals, or '-' when the figure does not exist."""
    return "-" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    sys.exit(main())
