"""Benchmark: DICOM (512x512) -> HU -> 3-window 256x256 float32 tensor, hemo vs a naive loop.

Run: ``.venv/bin/python bench/preprocess.py [--limit N] [--workers W] [--rounds R]``.

* naive: one process; ``dcmread``, ``pixel_array * slope + intercept`` in float64, three numpy
  windows at 512x512, one ``cv2.resize`` per window, stacked, cast to float32.
* hemo: :func:`hemo.preprocess.prepare_many`, the batch path training and evaluation use
  (:func:`hemo.io.read_scan` -> :func:`hemo.preprocess.to_model_input`: float32 throughout,
  one ``INTER_AREA`` resize of HU, three windows at 256x256), once in this process
  (``workers=1``) and once over a process pool (``--workers``).

Two inputs, each timed on its own:

* uncompressed (the primary case, key ``ratio``): RSNA-2019 ships uncompressed slices; here the
  real CQ500 slices of ``../shared/data`` decompressed to Explicit VR Little Endian in a
  temporary folder (synthetic uncompressed CT when ``../shared/data`` is absent);
* JPEG Lossless (key ``jpeg_lossless_ratio``): the CQ500 files as shipped, where GDCM's decoder
  costs the same in both loops and bounds the ratio.

Each method runs ``--rounds`` times, interleaved, and its best time counts; the load average at
the start and end is printed, because other jobs may share the cores. On a shared machine the
wall-clock rates depend on how much CPU the scheduler grants, so the CPU time per slice (this
process and its workers, from ``os.times``) is reported too, with ``cpu_ratio`` = naive CPU /
hemo single-process CPU: the work each loop does, whatever the contention. The last line of output is
one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pydicom
from pydicom.uid import ExplicitVRLittleEndian

from hemo.config import SHARED_DATA_DIR
from hemo.preprocess import InputSpec, prepare_many

SIZE = 256
SPEC = InputSpec(size=SIZE, windows=("brain", "subdural", "soft_tissue"))
#: (center, width) in HU of the naive loop, the same three windows as SPEC.
NAIVE_WINDOWS = ((40.0, 80.0), (80.0, 200.0), (40.0, 380.0))
CQ500_SERIES = SHARED_DATA_DIR / "cq500" / "CQ500-CT-0"
#: Slices per input (the first of the series): keeps the whole run near a minute on 2 busy cores.
DEFAULT_SLICES = 120
SYNTHETIC_SIDE = 512
SYNTHETIC_CENTER = SYNTHETIC_SIDE // 2
#: Semi-axes (rows, columns) in pixels of the synthetic head.
SYNTHETIC_AXES = (200, 170)
SYNTHETIC_TISSUE_HU = (35.0, 10.0)
SYNTHETIC_AIR_HU = -1000
SYNTHETIC_INTERCEPT = -1024
#: Each method runs this many times, interleaved; the best time counts (the machine is shared).
ROUNDS = 3
SEED = 0
MS = 1000.0


def naive_one(path: str) -> np.ndarray:
    """The straightforward loop body people write first."""
    ds = pydicom.dcmread(path)
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    channels = []
    for center, width in NAIVE_WINDOWS:
        low, high = center - width / 2, center + width / 2
        x = (np.clip(hu, low, high) - low) / (high - low)
        channels.append(cv2.resize(x, (SIZE, SIZE)))
    return np.stack(channels, axis=-1).astype(np.float32)


def run_naive(paths: list[str]) -> np.ndarray:
    """The naive loop over ``paths``: (N, SIZE, SIZE, 3) float32."""
    return np.stack([naive_one(p) for p in paths])


def run_hemo(paths: list[str], workers: int) -> np.ndarray:
    """hemo's batch path over ``paths``: (N, SIZE, SIZE, 3) float32; any failure is fatal here."""
    batch = prepare_many(paths, SPEC, workers=workers)
    if batch.failures:
        raise SystemExit(f"hemo failed on {len(batch.failures)} slices: {batch.failures[0]}")
    return batch.inputs


def uncompressed_copies(paths: list[str], folder: Path) -> list[str]:
    """The slices decompressed to Explicit VR Little Endian (as RSNA-2019 ships them)."""
    out = []
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.decompress()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        target = folder / Path(path).name
        ds.save_as(target, enforce_file_format=True)
        out.append(str(target))
    return out


def synthetic_series(folder: Path, n: int) -> list[str]:
    """Uncompressed 512x512 CT slices (a noisy head-sized disc) for machines without CQ500."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, generate_uid

    rng = np.random.default_rng(SEED)
    yy, xx = np.mgrid[:SYNTHETIC_SIDE, :SYNTHETIC_SIDE]
    rows, cols = SYNTHETIC_AXES
    head = (yy - SYNTHETIC_CENTER) ** 2 / rows**2 + (xx - SYNTHETIC_CENTER) ** 2 / cols**2 <= 1
    paths = []
    for i in range(n):
        tissue = rng.normal(*SYNTHETIC_TISSUE_HU, head.shape)
        hu = np.where(head, tissue, SYNTHETIC_AIR_HU).astype(np.int16)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = CTImageStorage, generate_uid(), "CT"
        ds.Rows, ds.Columns = hu.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = SYNTHETIC_INTERCEPT, 1
        ds.ImagePositionPatient, ds.InstanceNumber = [0, 0, float(i)], i + 1
        ds.PixelData = (hu - SYNTHETIC_INTERCEPT).astype(np.int16).tobytes()
        path = folder / f"slice{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(str(path))
    return paths


def cpu_seconds() -> float:
    """CPU seconds used so far by this process and its finished children (pool workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def best_of(methods: dict[str, Callable[[], np.ndarray]], rounds: int) -> dict[str, float]:
    """Best wall and CPU seconds of each method over ``rounds`` interleaved runs."""
    best = dict.fromkeys(methods, float("inf"))
    best.update({f"{name}_cpu": float("inf") for name in methods})
    outputs: dict[str, np.ndarray] = {}
    for _ in range(rounds):
        for name, method in methods.items():
            start, cpu_start = time.perf_counter(), cpu_seconds()
            outputs[name] = method()
            best[name] = min(best[name], time.perf_counter() - start)
            best[f"{name}_cpu"] = min(best[f"{name}_cpu"], cpu_seconds() - cpu_start)
    if not np.array_equal(outputs["hemo_single"], outputs["hemo_pool"]):
        raise SystemExit("hemo's pooled output differs from its single-process output")
    best["mean_abs_diff_vs_naive"] = float(np.abs(outputs["hemo_pool"] - outputs["naive"]).mean())
    return best


def measure(paths: list[str], workers: int, rounds: int) -> dict[str, float]:
    """slices/s of naive, hemo in one process and hemo pooled, and the two ratios."""
    run_hemo(paths[:2], 1)  # warm imports and decoders before timing
    naive_one(paths[0])
    seconds = best_of(
        {
            "naive": lambda: run_naive(paths),
            "hemo_single": lambda: run_hemo(paths, 1),
            "hemo_pool": lambda: run_hemo(paths, workers),
        },
        rounds,
    )
    n = len(paths)
    return {
        "naive_slices_per_s": round(n / seconds["naive"], 1),
        "hemo_single_process_slices_per_s": round(n / seconds["hemo_single"], 1),
        "hemo_slices_per_s": round(n / seconds["hemo_pool"], 1),
        "single_process_ratio": round(seconds["naive"] / seconds["hemo_single"], 2),
        "ratio": round(seconds["naive"] / seconds["hemo_pool"], 2),
        "naive_cpu_ms_per_slice": round(MS * seconds["naive_cpu"] / n, 2),
        "hemo_single_process_cpu_ms_per_slice": round(MS * seconds["hemo_single_cpu"] / n, 2),
        "hemo_pool_cpu_ms_per_slice": round(MS * seconds["hemo_pool_cpu"] / n, 2),
        "cpu_ratio": round(seconds["naive_cpu"] / seconds["hemo_single_cpu"], 2),
        "mean_abs_diff_vs_naive": round(seconds["mean_abs_diff_vs_naive"], 4),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=DEFAULT_SLICES, help="slices (0: all)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="best of N interleaved runs")
    args = parser.parse_args(argv)
    load_start = os.getloadavg()[0]
    print(
        f"load average (1 min) at start: {load_start:.1f} on {os.cpu_count()} cores",
        file=sys.stderr,
    )
    with tempfile.TemporaryDirectory(prefix="hemo-bench-") as tmp:
        if CQ500_SERIES.is_dir():
            jpeg = sorted(str(p) for p in CQ500_SERIES.glob("*.dcm"))
            jpeg = jpeg[: args.limit] if args.limit else jpeg
            uncompressed = uncompressed_copies(jpeg, Path(tmp))
            source = "CQ500-CT-0 (real): decompressed copies, and as shipped (JPEG Lossless)"
        else:
            jpeg = []
            uncompressed = synthetic_series(Path(tmp), args.limit or DEFAULT_SLICES)
            source = "synthetic CT (uncompressed; ../shared/data absent, no JPEG case)"
        plain = measure(uncompressed, args.workers, args.rounds)
        lossless = measure(jpeg, args.workers, args.rounds) if jpeg else {}
    result: dict[str, object] = {
        "bench": "preprocess",
        "source": source,
        "slices": len(uncompressed),
        "workers": args.workers,
        "rounds": args.rounds,
        "cpu_count": os.cpu_count(),
        "load_average_1min_start": round(load_start, 1),
        "load_average_1min_end": round(os.getloadavg()[0], 1),
        **plain,
        **{f"jpeg_lossless_{key}": value for key, value in lossless.items()},
    }
    for label, figures in (("uncompressed", plain), ("JPEG Lossless", lossless)):
        if figures:
            print(
                f"{label}: naive {figures['naive_slices_per_s']} slices/s; hemo "
                f"{figures['hemo_single_process_slices_per_s']} in one process "
                f"({figures['single_process_ratio']}x), {figures['hemo_slices_per_s']} on "
                f"{args.workers} workers ({figures['ratio']}x); CPU per slice naive "
                f"{figures['naive_cpu_ms_per_slice']} ms, hemo "
                f"{figures['hemo_single_process_cpu_ms_per_slice']} ms ({figures['cpu_ratio']}x)",
                file=sys.stderr,
            )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
