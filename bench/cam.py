"""Benchmark: time of each CAM method against a plain forward pass, batch 1, same input and model.

For every shipped model (``models/*.keras`` with its card) -- or, when none is shipped yet, a
compact model built at the default input size -- it times:

- ``forward``: the model's probabilities through a ``tf.function`` traced once with a fixed
  (None, H, W, C) signature (what ``hemo.predict.Predictor`` runs);
- each method of ``hemo.cam.METHODS`` end to end: cached gradient graph (forward + gradients of
  the logit down to the target layer), weighting, ReLU, upsampling and normalising.

Both are warmed up first; calls are interleaved so that load from other processes hits both alike;
the median of ``--repeats`` is reported (and the best-of ratio, steadier on a shared machine). Target: Grad-CAM <= 2.5x the forward pass.

Usage::

    python bench/cam.py [--models models/a.keras ...] [--repeats 30]

Prints a table on stderr and, last, one JSON line on stdout (keys ``<model>.<method>_ratio``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

log = logging.getLogger("bench.cam")

DEFAULT_REPEATS = 30
WARMUP_CALLS = 3
GRADCAM_TARGET_RATIO = 2.5
FALLBACK_NAME = "compact_default"
SEED = 0


def shipped_models() -> list[Path]:
    """``models/*.keras`` that have a card beside them."""
    from hemo.config import MODELS_DIR

    return sorted(p for p in MODELS_DIR.glob("*.keras") if p.with_suffix(".json").is_file())


def fallback_model():
    """A compact model at the default InputSpec (no shipped model yet) and its card."""
    from hemo.config import RSNA_LABELS
    from hemo.model import CAM_LAYERS, ModelCard, build_model
    from hemo.preprocess import InputSpec

    spec = InputSpec()
    model = build_model("compact", spec, RSNA_LABELS, weights=None)
    card = ModelCard(
        name=FALLBACK_NAME,
        architecture="compact",
        input_spec=spec,
        labels=tuple(RSNA_LABELS),
        cam_layer=CAM_LAYERS["compact"],
    )
    return model, card


def time_ms(call) -> float:
    """Wall time of one call in milliseconds."""
    start = time.perf_counter()
    call()
    return (time.perf_counter() - start) * 1e3


def bench_model(model, card, repeats: int) -> dict[str, float]:
    """Median forward and per-method times (ms) and their ratios for one model."""
    import numpy as np
    import tensorflow as tf

    from hemo.cam import METHODS

    shape = tuple(int(d) for d in model.inputs[0].shape[1:])
    x = np.random.default_rng(SEED).random((1, *shape), dtype=np.float32)
    signature = tf.TensorSpec((None, *shape), tf.float32)
    forward = tf.function(
        lambda batch: model(batch, training=False), input_signature=[signature]
    ).get_concrete_function()
    label = "any" if "any" in card.labels else 0
    explainers = {
        name: cls(model, layer=card.cam_layer or None, labels=card.labels)
        for name, cls in METHODS.items()
    }
    calls = {"forward": lambda: forward(tf.constant(x)).numpy()}
    for name, explainer in explainers.items():
        calls[name] = lambda e=explainer: e(x, label=label)
    for call in calls.values():
        for _ in range(WARMUP_CALLS):
            call()
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            samples[name].append(time_ms(call))
    medians = {name: statistics.median(values) for name, values in samples.items()}
    bests = {name: min(values) for name, values in samples.items()}
    row = {"forward_ms": medians["forward"], "forward_best_ms": bests["forward"]}
    for name in explainers:
        row[f"{name}_ms"] = medians[name]
        row[f"{name}_ratio"] = medians[name] / medians["forward"]
        # Best-of ratio: less sensitive to other processes on a shared machine
        row[f"{name}_best_ratio"] = bests[name] / bests["forward"]
    return row


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the table (stderr) and one JSON line (stdout)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", type=Path, default=None, help="models/*.keras")
    parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)

    import keras
    import tensorflow as tf

    from hemo.model import load_model

    keras.utils.set_random_seed(SEED)
    paths = shipped_models() if args.models is None else args.models
    entries = [(path.stem, *load_model(path)) for path in paths]
    if not entries:
        log.info("no shipped model in models/: benchmarking a compact model at the default size")
        entries = [(FALLBACK_NAME, *fallback_model())]
    threads = tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count()
    log.info("batch 1, median of %d, TF %s, %s CPU threads", args.repeats, tf.__version__, threads)
    summary: dict[str, float | str | bool] = {}
    for name, model, card in entries:
        row = bench_model(model, card, args.repeats)
        size = card.input_spec.size
        log.info(
            "%s (%s, %d px): forward %.1f ms", name, card.architecture, size, row["forward_ms"]
        )
        for method in ("gradcam", "gradcam++", "hirescam"):
            log.info(
                "  %-10s %7.1f ms  ratio %.2fx (best-of %.2fx)",
                method,
                row[f"{method}_ms"],
                row[f"{method}_ratio"],
                row[f"{method}_best_ratio"],
            )
        summary.update({f"{name}.{key}": round(value, 3) for key, value in row.items()})
    gradcam_ratios = [v for k, v in summary.items() if k.endswith(".gradcam_ratio")]
    summary["max_gradcam_ratio"] = max(gradcam_ratios)
    summary["gradcam_ratio_target"] = GRADCAM_TARGET_RATIO
    summary["gradcam_ratio_met"] = max(gradcam_ratios) <= GRADCAM_TARGET_RATIO
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
