"""Training throughput: the real tf.data pipeline vs the same model on in-memory tensors.

Both sides train the same compact model for the same number of steps on the same batches of a
phantom set (written to a temporary folder). The pipeline side reads DICOM through
``hemo.pipeline.make_dataset`` (decode + preprocess in parallel, cached in memory after the
first pass, seeded augmentation on the training batches); the baseline feeds preprocessed numpy
arrays straight to ``model.fit``. Both are warmed up first (compile, cache fill), then timed in
interleaved rounds (best of each side), so a busy machine slows both alike. Two ratios: with the
training augmentation (what a run does; the in-memory side has none, so this includes the
augmentation's cost) and without it (the data path alone). Target: pipeline / in-memory >= 0.9.
The last line printed is one JSON object.

    .venv/bin/python bench/pipeline.py [--size 128] [--batch 16] [--epochs 2]
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

log = logging.getLogger("bench.pipeline")

# Settings ---------------------------------------------------------------------------------------
N_STUDIES = 12
SLICES_PER_STUDY = 6
PHANTOM_SIZE_PX = 256
SEED = 0
DEFAULT_SIZE = 128
DEFAULT_BATCH = 16
DEFAULT_EPOCHS = 2
ROUNDS = 3


def main() -> None:
    """Run both sides and print the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE, help="model input size, px")
    parser.add_argument("--batch", type=int, default=DEFAULT_BATCH)
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help="timed epochs")
    parser.add_argument("--augment", type=float, default=1.0, help="augmentation strength")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    import keras
    import numpy as np

    from hemo.config import RSNA_LABELS
    from hemo.datasets import load_index
    from hemo.model import build_model
    from hemo.phantom import write_demo_dataset
    from hemo.pipeline import Augment, class_weights, label_matrix, load_inputs, make_dataset
    from hemo.preprocess import InputSpec

    with tempfile.TemporaryDirectory(prefix="hemo-bench-") as tmp:
        # Data: a phantom set on disk, its index, the same rows for both sides
        write_demo_dataset(Path(tmp), N_STUDIES, seed=SEED, slices_per_study=SLICES_PER_STUDY,
                           size=PHANTOM_SIZE_PX)  # fmt: skip
        rows = load_index(Path(tmp))
        n = (len(rows) // args.batch) * args.batch
        rows = rows.iloc[:n].reset_index(drop=True)
        spec = InputSpec(size=args.size)
        weights = class_weights(rows)
        steps = n // args.batch
        # Pipeline side: DICOM -> preprocess -> cache -> shuffle -> batch -> augment
        ds = make_dataset(rows, spec, RSNA_LABELS, args.batch, True,
                          Augment(strength=args.augment, seed=SEED), SEED, cache=True,
                          weights=weights)  # fmt: skip
        ds_plain = make_dataset(rows, spec, RSNA_LABELS, args.batch, True,
                                Augment(strength=0.0, seed=SEED), SEED, cache=True,
                                weights=weights)  # fmt: skip
        # In-memory side: the same preprocessed tensors as numpy arrays
        x = load_inputs(list(rows["path"]), spec)
        y = label_matrix(rows, RSNA_LABELS)
        w = np.where(rows["label_any"].to_numpy() == 1, weights[1], weights[0]).astype("float32")

        def fresh_model() -> keras.Model:
            keras.utils.set_random_seed(SEED)
            model = build_model("compact", spec, RSNA_LABELS)
            model.compile(optimizer="adam", loss="binary_crossentropy")
            return model

        def images_per_s(fit) -> float:
            t0 = time.perf_counter()
            fit(args.epochs)
            return args.epochs * steps * args.batch / (time.perf_counter() - t0)

        sides = {}
        for name, data in (("pipeline", ds), ("plain", ds_plain)):
            model = fresh_model()
            sides[name] = lambda e, m=model, d=data: m.fit(d, epochs=e, verbose=0)
        memory_model = fresh_model()
        sides["memory"] = lambda e: memory_model.fit(
            x, y, sample_weight=w, batch_size=args.batch, epochs=e, shuffle=False, verbose=0
        )
        for fit in sides.values():
            fit(1)  # warm-up: compile, fill the cache
        best = dict.fromkeys(sides, 0.0)
        for _ in range(ROUNDS):
            for name, fit in sides.items():
                best[name] = max(best[name], images_per_s(fit))
        pipeline_ips, plain_ips, memory_ips = best["pipeline"], best["plain"], best["memory"]
    result = {
        "images": n,
        "steps_per_epoch": steps,
        "size": args.size,
        "batch": args.batch,
        "augment": args.augment,
        "pipeline_images_per_s": round(pipeline_ips, 2),
        "in_memory_images_per_s": round(memory_ips, 2),
        "pipeline_no_augment_images_per_s": round(plain_ips, 2),
        "pipeline_vs_memory_ratio": round(pipeline_ips / memory_ips, 3),
        "no_augment_ratio": round(plain_ips / memory_ips, 3),
    }
    log.info("pipeline %.1f img/s (%.1f without augmentation), in-memory %.1f img/s, "
             "ratio %.3f / %.3f (target >= 0.9)", pipeline_ips, plain_ips, memory_ips,
             pipeline_ips / memory_ips, plain_ips / memory_ips)  # fmt: skip
    print(json.dumps(result))


if __name__ == "__main__":
    main()
