"""Benchmark: the whole predict path against a bare ``model(x)`` on the same prepared tensors.

For every shipped model (``models/*.keras`` with its card) -- or, when none is shipped yet, two
compact models built at the default input size (display grayscale and HU windows) and saved to a
temporary folder -- it times, at batch 1 and batch 32:

- ``predict``: :meth:`hemo.predict.Predictor.predict` on files on disk: read and decode
  (:func:`hemo.io.iter_scans`), preprocess (``to_model_input``, thread pool), the compiled
  forward pass, results;
- ``bare``: ``model(x, training=False)`` on the very tensors ``to_model_input`` made from the
  same files, already in memory as a ``tf.Tensor``;
- ``compiled`` (for information): the Predictor's own compiled forward pass on those tensors, so
  ``predict / compiled`` is the cost of reading and preprocessing that overlapping did not hide
  (reported as ``overhead_vs_compiled``, not a target; with a card that blends density
  features, this includes measuring them, :meth:`hemo.predict.Predictor.forward`'s part);
- ``density`` (cards with a ``density`` entry only): measuring the density features of the
  in-memory tensors (:mod:`hemo.density`), part of the card's model though not of the network:
  ``ratio_with_density`` is ``predict / (bare + density)``, the predict path against the whole
  model on tensors (``ratio`` keeps counting the features as predict-path cost).

Inputs are real Kaggle head-CT PNGs for display-grayscale models (``../shared/data/head_ct``)
and 512 x 512 phantom DICOM slices for HU models. Everything is warmed up first, the two are
interleaved call by call so load from other processes hits both alike, and the median of
``--repeats`` is reported. Target: predict <= 1.15x bare.

Usage::

    python bench/inference.py [--models models/a.keras ...] [--repeats 30]

Prints a table on stderr and, last, one JSON line on stdout (keys ``<model>.b<N>_ratio`` and
``max_ratio``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

log = logging.getLogger("bench.inference")

DEFAULT_REPEATS = 30
WARMUP_CALLS = 3
BATCH_SIZES = (1, 32)
TARGET_RATIO = 1.15
#: Inputs cycled through (one batch of the largest size).
N_FILES = max(BATCH_SIZES)
PHANTOM_SIZE_PX = 512
SEED = 0


def shipped_models() -> list[Path]:
    """``models/*.keras`` that have a card beside them."""
    from hemo.config import MODELS_DIR

    return sorted(p for p in MODELS_DIR.glob("*.keras") if p.with_suffix(".json").is_file())


def fallback_models(folder: Path) -> list[Path]:
    """Two compact models at the default size (display 1-channel ``any``; HU 3-window RSNA)."""
    import keras

    from hemo.config import RSNA_LABELS
    from hemo.model import CAM_LAYERS, ModelCard, build_model, save_model
    from hemo.preprocess import InputSpec

    keras.utils.set_random_seed(SEED)
    paths = []
    for name, spec, labels in (
        ("compact_display", InputSpec(mode="display", channels=1), ("any",)),
        ("compact_hu", InputSpec(), tuple(RSNA_LABELS)),
    ):
        card = ModelCard(
            name=name,
            architecture="compact",
            input_spec=spec,
            labels=labels,
            cam_layer=CAM_LAYERS["compact"],
        )
        paths.append(save_model(build_model("compact", spec, labels), folder / name, card))
    return paths


def input_files(mode: str, folder: Path) -> list[Path]:
    """:data:`N_FILES` scans a model of ``mode`` accepts: Kaggle PNGs, else phantom DICOMs."""
    from hemo.config import SHARED_DATA_DIR

    pngs = sorted((SHARED_DATA_DIR / "head_ct" / "head_ct").glob("*.png"))
    if mode == "display" and len(pngs) >= N_FILES:
        return pngs[:N_FILES]
    phantoms = folder / "phantoms"
    if not (phantoms / "index.parquet").is_file():
        from hemo.phantom import write_demo_dataset

        n_studies = N_FILES // 8
        write_demo_dataset(
            phantoms, n_studies=n_studies, seed=SEED, slices_per_study=8, size=PHANTOM_SIZE_PX
        )
    return sorted((phantoms / "stage_2_train").glob("*.dcm"))[:N_FILES]


def time_ms(call: Callable[[], object]) -> float:
    """Wall time of one call in milliseconds."""
    start = time.perf_counter()
    call()
    return (time.perf_counter() - start) * 1e3


def bench_model(path: Path, folder: Path, repeats: int) -> dict[str, float]:
    """Median predict-path and bare times (ms) and their ratio, per batch size, for one model."""
    import numpy as np
    import tensorflow as tf

    from hemo.io import read_scan
    from hemo.predict import Predictor

    out: dict[str, float] = {}
    with Predictor(path, batch_size=max(BATCH_SIZES)) as predictor:
        model = predictor.model
        files = input_files(predictor.spec.mode, folder)
        prepared = np.stack([predictor.prepare(read_scan(f)) for f in files])
        for batch in BATCH_SIZES:
            groups = [files[i : i + batch] for i in range(0, len(files), batch)]
            tensors = [tf.constant(prepared[i : i + batch]) for i in range(0, len(files), batch)]
            results = predictor.predict(groups[0])
            if any(r.error is not None for r in results):
                raise RuntimeError(f"benchmark input failed: {results}")
            for k in range(WARMUP_CALLS):
                predictor.predict(groups[k % len(groups)])
                model(tensors[k % len(groups)], training=False).numpy()
            predict_ms, bare_ms, compiled_ms, density_ms = [], [], [], []
            for k in range(repeats):
                files_k, tensor_k = groups[k % len(groups)], tensors[k % len(groups)]
                predict_ms.append(time_ms(lambda f=files_k: predictor.predict(f)))
                bare_ms.append(time_ms(lambda t=tensor_k: model(t, training=False).numpy()))
                compiled_ms.append(time_ms(lambda t=tensor_k: predictor.forward(t)))
                if predictor.density is not None:
                    density_ms.append(time_ms(lambda t=tensor_k: predictor.features(t.numpy())))
            p, b = statistics.median(predict_ms), statistics.median(bare_ms)
            c = statistics.median(compiled_ms)
            if density_ms:
                d = statistics.median(density_ms)
                out[f"b{batch}_density_ms"] = round(d, 3)
                out[f"b{batch}_ratio_with_density"] = round(p / (b + d), 3)
            out[f"b{batch}_predict_ms"] = round(p, 3)
            out[f"b{batch}_bare_ms"] = round(b, 3)
            out[f"b{batch}_compiled_ms"] = round(c, 3)
            out[f"b{batch}_ratio"] = round(p / b, 3)
            out[f"b{batch}_overhead_vs_compiled"] = round(p / c, 3)
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; prints the table on stderr and one JSON line on stdout."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", type=Path, help="default: models/*.keras")
    parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="hemo-bench-") as tmp:
        folder = Path(tmp)
        paths = args.models or shipped_models() or fallback_models(folder)
        summary: dict[str, float] = {}
        log.info(
            "%-24s %6s %12s %12s %8s %12s %10s",
            "model",
            "batch",
            "predict ms",
            "bare ms",
            "ratio",
            "compiled ms",
            "/compiled",
        )
        for path in paths:
            timings = bench_model(path, folder, args.repeats)
            for batch in BATCH_SIZES:
                log.info(
                    "%-24s %6d %12.2f %12.2f %7.3fx %12.2f %9.3fx",
                    path.stem,
                    batch,
                    timings[f"b{batch}_predict_ms"],
                    timings[f"b{batch}_bare_ms"],
                    timings[f"b{batch}_ratio"],
                    timings[f"b{batch}_compiled_ms"],
                    timings[f"b{batch}_overhead_vs_compiled"],
                )
                if f"b{batch}_density_ms" in timings:
                    log.info(
                        "%-24s %6d density features %.2f ms: %.3fx against network + features",
                        path.stem,
                        batch,
                        timings[f"b{batch}_density_ms"],
                        timings[f"b{batch}_ratio_with_density"],
                    )
            summary.update({f"{path.stem}.{k}": v for k, v in timings.items()})
    ratios = [v for k, v in summary.items() if k.endswith("_ratio")]
    summary["max_ratio"] = max(ratios)
    summary["target_ratio"] = TARGET_RATIO
    log.info("max ratio %.3fx (target <= %.2fx)", summary["max_ratio"], TARGET_RATIO)
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
