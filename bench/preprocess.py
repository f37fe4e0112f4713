"""Benchmark: DICOM (512x512) -> HU -> 3-window 256x256 float32 tensor, hemo vs a naive loop.

Run: ``.venv/bin/python bench/preprocess.py [--limit N] [--workers W]``.

* naive: one process; ``dcmread``, ``pixel_array * slope + intercept`` in float64, three numpy
  windows at 512x512, one ``cv2.resize`` per window, stacked, cast to float32.
* hemo: :func:`hemo.dicom.read_dicom` + :func:`hemo.preprocess.to_model_input` (float32
  throughout, one ``INTER_AREA`` resize of HU, then three windows at 256x256 as one multiply-add
  and clip per plane), in a process pool over chunks of files. The single-process hemo rate is
  printed too, so the gain that is not parallelism is visible.

Inputs: the real CQ500 series in ``../shared/data`` (JPEG Lossless: decoding counts) when
present, else uncompressed synthetic CT slices written to a temporary folder. Each method runs
``--rounds`` times, interleaved, and its best time counts. Prints one JSON line at the end with
``ratio`` = hemo slices/s / naive slices/s and the load average (the machine may be shared).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pydicom

from hemo.config import SHARED_DATA_DIR
from hemo.dicom import read_dicom
from hemo.preprocess import InputSpec, to_model_input

SIZE = 256
SPEC = InputSpec(size=SIZE, windows=("brain", "subdural", "soft_tissue"))
#: (center, width) in HU of the naive loop, the same three windows as SPEC.
NAIVE_WINDOWS = ((40.0, 80.0), (80.0, 200.0), (40.0, 380.0))
CQ500_SERIES = SHARED_DATA_DIR / "cq500" / "CQ500-CT-0"
SYNTHETIC_SLICES = 120
SYNTHETIC_SIDE = 512
#: Chunks per worker: enough to balance the load, few enough to keep pickling overhead small.
CHUNKS_PER_WORKER = 4
#: Each method runs this many times, interleaved; the best time counts (the machine is shared).
ROUNDS = 3


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


def hemo_chunk(paths: list[str]) -> np.ndarray:
    """hemo's path for a chunk of files: (N, SIZE, SIZE, 3) float32."""
    out = np.empty((len(paths), SIZE, SIZE, len(SPEC.windows)), dtype=np.float32)
    for i, path in enumerate(paths):
        out[i] = to_model_input(read_dicom(path), SPEC)
    return out


def run_naive(paths: list[str]) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    out = np.stack([naive_one(p) for p in paths])
    return time.perf_counter() - start, out


def run_hemo(paths: list[str], workers: int) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    if workers <= 1:
        out = hemo_chunk(paths)
    else:
        n_chunks = min(len(paths), workers * CHUNKS_PER_WORKER)
        chunks = [list(c) for c in np.array_split(np.asarray(paths, dtype=object), n_chunks)]
        with ProcessPoolExecutor(max_workers=workers) as pool:
            out = np.concatenate(list(pool.map(hemo_chunk, chunks)))
    return time.perf_counter() - start, out


def synthetic_series(folder: Path, n: int) -> list[str]:
    """Uncompressed 512x512 CT slices (a noisy head-sized disc) for machines without CQ500."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:SYNTHETIC_SIDE, :SYNTHETIC_SIDE]
    head = (yy - 256) ** 2 / 200**2 + (xx - 256) ** 2 / 170**2 <= 1
    paths = []
    for i in range(n):
        hu = np.where(head, rng.normal(35, 10, head.shape), -1000).astype(np.int16)
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
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.ImagePositionPatient, ds.InstanceNumber = [0, 0, float(i)], i + 1
        ds.PixelData = (hu + 1024).astype(np.int16).tobytes()
        path = folder / f"slice{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(str(path))
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=0, help="use at most N slices (0: all)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="best of N interleaved runs")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="hemo-bench-") as tmp:
        if CQ500_SERIES.is_dir():
            paths = sorted(str(p) for p in CQ500_SERIES.glob("*.dcm"))
            source = "CQ500-CT-0 (real, JPEG Lossless)"
        else:
            paths = synthetic_series(Path(tmp), SYNTHETIC_SLICES)
            source = "synthetic CT (uncompressed; ../shared/data absent)"
        if args.limit:
            paths = paths[: args.limit]
        hemo_chunk(paths[:2])  # warm imports and decoders before timing
        naive_one(paths[0])
        naive_s = single_s = hemo_s = float("inf")
        for _ in range(args.rounds):
            seconds, naive_out = run_naive(paths)
            naive_s = min(naive_s, seconds)
            single_s = min(single_s, run_hemo(paths, 1)[0])
            seconds, hemo_out = run_hemo(paths, args.workers)
            hemo_s = min(hemo_s, seconds)
    n = len(paths)
    result = {
        "bench": "preprocess",
        "source": source,
        "slices": n,
        "workers": args.workers,
        "rounds": args.rounds,
        "load_average_1min": round(os.getloadavg()[0], 1),
        "naive_slices_per_s": round(n / naive_s, 1),
        "hemo_single_process_slices_per_s": round(n / single_s, 1),
        "hemo_slices_per_s": round(n / hemo_s, 1),
        "single_process_ratio": round(naive_s / single_s, 2),
        "ratio": round(naive_s / hemo_s, 2),
        "mean_abs_diff_vs_naive": round(float(np.abs(hemo_out - naive_out).mean()), 4),
    }
    print(f"{source}: {n} slices -> ({SIZE}, {SIZE}, 3) float32", file=sys.stderr)
    print(
        f"naive {result['naive_slices_per_s']} slices/s; hemo {result['hemo_slices_per_s']} "
        f"slices/s on {args.workers} workers ({result['hemo_single_process_slices_per_s']} "
        f"in one process); ratio {result['ratio']}x",
        file=sys.stderr,
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
