"""Look-alike images: the same picture at another size, or a neighbouring slice of one head.

Sets without patient ids (the Kaggle head-CT images, folders of PNGs cut from papers) hold the
same image more than once at different sizes and crops, and runs of neighbouring slices of one
patient. A split that puts one copy in training and the other in the test fold measures memory,
not generalisation. This module finds them from the pixels so cross-validation can keep them in
one fold (:func:`hemo.crossval.assign_folds`) and the data-quality report can list them.

The signature of an image is its head, cropped and resized to ``SIGNATURE_SIZE`` pixels in
display grayscale (DICOM through the brain window), with its mean removed and scaled to unit
length. The similarity of two images is the Pearson correlation of their signatures, the larger
of the image as is and left-right mirrored (one copy may be flipped). Pairs at or above the
threshold are linked; the groups are the connected components of those links.

The default threshold, 0.93, was set by eye on the 140 Kaggle head-CT images (``docs/MODELS.md``,
"Look-alike images"): at 0.93 each of the 26 groups is one picture at several sizes (005 = 022 =
058, 004 = 057, 009 = 065, ...) or neighbouring slices of one head, with one exception (063 with
102, two heads of similar shape); at 0.92 groups begin to join different patients.

Every pair is compared, so time and memory grow with the square of the image count; above
``MAX_IMAGES`` the check refuses with a message (give the set a ``patient_id`` column instead).
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import pandas as pd

from hemo.errors import ConfigError, HemoError, LimitError

log = logging.getLogger(__name__)

#: Side of the signature image, pixels (64 x 64 head crop).
SIGNATURE_SIZE = 64
#: Correlation at or above which two images are look-alikes.
DEFAULT_THRESHOLD = 0.93
#: Most images one check compares (every pair: 20 000 images are 2e8 pairs of 4096 values).
MAX_IMAGES = 20_000
#: Rows of the similarity matrix computed at once (memory: BLOCK_ROWS x N float32).
BLOCK_ROWS = 1024
#: Below this norm (after removing the mean) an image is flat: its signature is all zeros.
FLAT_NORM = 1e-4
#: File sets whose pairs are kept (the split, the quality report and the EDA page reuse them).
PAIR_CACHE_SIZE = 4
#: Threads reading and preprocessing images (decoders release the GIL).
READ_THREADS = 2
#: Signatures kept in memory, keyed by file and stamp (16 KB each: 32 MB at most), so that the
#: checks asking about one folder (its split, its quality report, the training images a scan is
#: matched against) read each file once; the least recently used go first.
SIGNATURE_CACHE_IMAGES = 2048

_signature_cache: OrderedDict[tuple[str, tuple[int, int]], npt.NDArray[np.float32]] = OrderedDict()
_signature_lock = threading.Lock()


@dataclass(frozen=True)
class Lookalikes:
    """What a look-alike check found.

    Attributes:
        threshold: Correlation at or above which two images were linked.
        groups: int64 (N,) group number of every input, aligned with the inputs; inputs in
            one group are linked by a chain of look-alike pairs; an input that could not be
            read is its own group.
        pairs: One row per linked pair: ``a``, ``b`` (input positions, a < b) and
            ``similarity``, most similar first.
        failed: ``(input position, error message)`` of inputs that could not be read.
    """

    threshold: float
    groups: npt.NDArray[np.int64]
    pairs: pd.DataFrame = field(repr=False)
    failed: tuple[tuple[int, str], ...] = ()

    @property
    def n_groups(self) -> int:
        """Number of groups (an image without look-alikes is a group of one)."""
        return int(len(np.unique(self.groups)))

    @property
    def n_grouped(self) -> int:
        """Inputs that share their group with at least one other."""
        _, counts = np.unique(self.groups, return_counts=True)
        return int(counts[counts > 1].sum())


def check_threshold(threshold: float) -> float:
    """The threshold as a float in (0, 1]; anything else raises ConfigError."""
    try:
        value = float(threshold)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"look-alike threshold must be a number, got {threshold!r}") from exc
    if not 0.0 < value <= 1.0:
        raise ConfigError(
            f"look-alike threshold is {value}: must be in (0, 1] (a correlation; "
            f"{DEFAULT_THRESHOLD} by default), or 0 to turn the check off"
        )
    return value


def signature(scan) -> npt.NDArray[np.float32]:
    """The look-alike signature of one scan.

    Args:
        scan: A :class:`hemo.dicom.CTSlice` or :class:`hemo.images.Image2D`. Not modified.

    Returns:
        float32 (SIGNATURE_SIZE, SIGNATURE_SIZE), zero mean and unit norm (all zeros for a
        blank image, which then correlates 0 with everything).
    """
    from hemo.preprocess import InputSpec, to_model_input

    spec = InputSpec(size=SIGNATURE_SIZE, mode="display", channels=1, crop_head=True)
    image = to_model_input(scan, spec)[:, :, 0].astype(np.float64)
    image -= image.mean()
    norm = float(np.linalg.norm(image))
    if norm < FLAT_NORM:
        return np.zeros_like(image, dtype=np.float32)
    return (image / norm).astype(np.float32)


def similarity(a: npt.ArrayLike, b: npt.ArrayLike) -> float:
    """Similarity of two signatures: their correlation, as is or with ``b`` mirrored."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return float(max(np.sum(a * b), np.sum(a * b[:, ::-1])))


def similar_pairs(signatures: npt.ArrayLike, threshold: float) -> pd.DataFrame:
    """Every pair of signatures whose :func:`similarity` is at least ``threshold``.

    Args:
        signatures: float32 (N, S, S) signatures (:func:`signature`).
        threshold: Correlation in (0, 1].

    Returns:
        ``a``, ``b`` (positions, a < b), ``similarity``; most similar first.
    """
    sigs = np.asarray(signatures, np.float32)
    n = len(sigs)
    if n == 0:
        return pd.DataFrame(
            {"a": np.zeros(0, np.int64), "b": np.zeros(0, np.int64), "similarity": np.zeros(0)}
        )
    flat = sigs.reshape(n, -1)
    mirrored = sigs[:, :, ::-1].reshape(n, -1)
    found_a, found_b, found_s = [], [], []
    for start in range(0, n, BLOCK_ROWS):
        rows = flat[start : start + BLOCK_ROWS]
        scores = np.maximum(rows @ flat.T, rows @ mirrored.T)
        a, b = np.nonzero(scores >= threshold)
        a += start
        keep = a < b
        found_a.append(a[keep])
        found_b.append(b[keep])
        found_s.append(scores[a[keep] - start, b[keep]])
    pairs = pd.DataFrame(
        {
            "a": np.concatenate(found_a).astype(np.int64),
            "b": np.concatenate(found_b).astype(np.int64),
            "similarity": np.concatenate(found_s).astype(float),
        }
    )
    return pairs.sort_values(["similarity", "a", "b"], ascending=[False, True, True]).reset_index(
        drop=True
    )


def link_groups(
    n: int, pairs: pd.DataFrame, base_groups: Sequence | None = None
) -> npt.NDArray[np.int64]:
    """Connected components of ``n`` items linked by ``pairs`` (and by equal ``base_groups``).

    Args:
        n: Number of items.
        pairs: ``a``, ``b`` positions of linked items.
        base_groups: Optional (n,) labels (e.g. patient ids); items with equal labels are
            linked too.

    Returns:
        int64 (n,) component numbers, numbered in order of first appearance.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    a = list(pairs["a"].to_numpy(np.int64)) if len(pairs) else []
    b = list(pairs["b"].to_numpy(np.int64)) if len(pairs) else []
    if base_groups is not None:
        codes = pd.factorize(pd.Series(list(base_groups)))[0]
        first: dict[int, int] = {}
        for i, code in enumerate(codes):
            if code < 0:
                continue
            if code in first:
                a.append(first[code])
                b.append(i)
            else:
                first[code] = i
    graph = coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    return pd.factorize(labels)[0].astype(np.int64)


def _read_signature(path: str) -> tuple[npt.NDArray[np.float32] | None, str | None]:
    """(signature, None) of one file, or (None, the error message)."""
    from hemo.io import read_scan

    try:
        return signature(read_scan(path)), None
    except HemoError as exc:
        return None, str(exc)
    except (OSError, ValueError) as exc:  # a decoder's own failure on a damaged file
        return None, f"{path}: {exc}"


def _cached_signature(path: str) -> tuple[npt.NDArray[np.float32] | None, str | None]:
    """:func:`_read_signature` through the signature cache (a file whose stamp changed, or
    that has none, is read again)."""
    stamp = _stamp(path)
    key = (path, stamp)
    if stamp is not None:
        with _signature_lock:
            found = _signature_cache.get(key)
            if found is not None:
                _signature_cache.move_to_end(key)
                return found, None
    sig, err = _read_signature(path)
    if sig is not None and stamp is not None:
        sig.setflags(write=False)
        with _signature_lock:
            _signature_cache[key] = sig
            _signature_cache.move_to_end(key)
            while len(_signature_cache) > SIGNATURE_CACHE_IMAGES:
                _signature_cache.popitem(last=False)
    return sig, err


def _within_limit(paths: Iterable[str], what: str, hint: str = "") -> list[str]:
    """``paths`` as strings; more than :data:`MAX_IMAGES` raise LimitError (``what`` names the
    check, with ``{n}`` for the count; ``hint`` says what to do)."""
    paths = [str(p) for p in paths]
    if len(paths) > MAX_IMAGES:
        raise LimitError(f"{what.format(n=len(paths))}: at most {MAX_IMAGES}{hint}")
    return paths


def _read_signatures(
    paths: Sequence[str], what: str
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32], tuple[tuple[int, str], ...]]:
    """Signatures of the readable ``paths``, read in threads (or taken from the cache).

    Returns:
        (positions of the readable paths, their (K, S, S) signatures, ``(position, error)`` of
        the others, each also logged as a warning naming ``what`` the check is).
    """
    with ThreadPoolExecutor(max_workers=READ_THREADS) as pool:
        read = list(pool.map(_cached_signature, paths))
    failed = tuple((i, err) for i, (sig, err) in enumerate(read) if sig is None)
    for i, err in failed:
        log.warning("%s: %s left out (%s)", what, paths[i], err)
    keep = np.asarray([i for i, (sig, _) in enumerate(read) if sig is not None], np.int64)
    size = (0, SIGNATURE_SIZE, SIGNATURE_SIZE)
    stack = np.stack([read[i][0] for i in keep]) if len(keep) else np.zeros(size, np.float32)
    return keep, stack, failed


def find_lookalikes(
    paths: Iterable[str],
    threshold: float = DEFAULT_THRESHOLD,
    base_groups: Sequence | None = None,
) -> Lookalikes:
    """Read every image, link look-alike pairs, and group them.

    Args:
        paths: Image or DICOM files (any :func:`hemo.io.read_scan` source path).
        threshold: Correlation at or above which two images are linked, in (0, 1].
        base_groups: Optional (N,) labels (e.g. ``patient_id``, missing as None/NaN) whose equal
            values are linked as well, so a patient's images stay together with their
            look-alikes.

    Returns:
        The :class:`Lookalikes`; a file that cannot be read is listed in ``failed`` (and is its
        own group), the others are still compared.

    Raises:
        ConfigError: A threshold outside (0, 1].
        LimitError: More than :data:`MAX_IMAGES` paths.
    """
    threshold = check_threshold(threshold)
    paths = _within_limit(
        paths,
        "look-alike check of {n} images",
        " (every pair is compared); give the set a patient_id column instead, or turn the "
        "check off (hemo crossval --lookalike 0)",
    )
    pairs, failed = _pairs_of(tuple(paths), tuple(_stamp(p) for p in paths), threshold)
    groups = link_groups(len(paths), pairs, base_groups)
    return Lookalikes(threshold=threshold, groups=groups, pairs=pairs.copy(), failed=failed)


def _stamp(path: str) -> tuple[int, int] | None:
    """(mtime in ns, size) of a file, or ``None``: a rewritten file is read again."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_mtime_ns, info.st_size


@functools.lru_cache(maxsize=PAIR_CACHE_SIZE)
def _pairs_of(
    paths: tuple[str, ...], stamps: tuple, threshold: float
) -> tuple[pd.DataFrame, tuple[tuple[int, str], ...]]:
    """Linked pairs and unreadable inputs of ``paths`` (cached: the split, the quality report
    and the EDA page ask about the same files; ``stamps`` key a changed file out)."""
    del stamps
    positions, sigs, failed = _read_signatures(paths, "look-alike check (its own group)")
    local = similar_pairs(sigs, threshold)
    pairs = local.assign(a=positions[local["a"].to_numpy()], b=positions[local["b"].to_numpy()])
    return pairs, failed


def group_weights(
    paths: Sequence[str], patient_ids: Sequence | None = None, threshold: float = DEFAULT_THRESHOLD
) -> npt.NDArray[np.float32]:
    """Per-image training weights that count each look-alike group once.

    An image in a group of ``k`` look-alikes weighs ``1 / k``, so a picture stored three times
    or a run of six neighbouring slices weighs as much as one image; images with a patient id
    are not compared and weigh 1. The weights are scaled to a mean of 1.

    Args:
        paths: Training images.
        patient_ids: Optional (N,) ids (missing as None/NaN); rows with one are left at 1.
        threshold: Look-alike correlation.

    Returns:
        float32 (N,) weights, mean 1.
    """
    n = len(paths)
    weights = np.ones(n, np.float64)
    own = (
        np.ones(n, bool)
        if patient_ids is None
        else pd.isna(pd.Series(list(patient_ids), dtype=object)).to_numpy()
    )
    rows = np.flatnonzero(own)
    if len(rows) >= 2:
        found = find_lookalikes([str(paths[i]) for i in rows], threshold)
        sizes = np.bincount(found.groups)[found.groups]
        weights[rows] = 1.0 / sizes
    return (weights * n / weights.sum()).astype(np.float32) if n else weights.astype(np.float32)


def best_matches(
    queries: npt.ArrayLike, references: npt.ArrayLike, threshold: float
) -> pd.DataFrame:
    """For each query signature, the most similar reference at or above ``threshold``.

    Args:
        queries: float32 (Q, S, S) signatures.
        references: float32 (R, S, S) signatures.
        threshold: Correlation in (0, 1].

    Returns:
        ``query``, ``reference`` (positions), ``similarity``: one row per query that has a
        match, in query order.
    """
    q_sigs, refs = np.asarray(queries, np.float32), np.asarray(references, np.float32)
    found_q, found_r, found_s = [], [], []
    if len(q_sigs) and len(refs):
        q = q_sigs.reshape(len(q_sigs), -1)
        r = refs.reshape(len(refs), -1)
        r_mirrored = refs[:, :, ::-1].reshape(len(refs), -1)
        for start in range(0, len(q), BLOCK_ROWS):
            rows = q[start : start + BLOCK_ROWS]
            scores = np.maximum(rows @ r.T, rows @ r_mirrored.T)
            best = scores.argmax(axis=1)
            score = scores[np.arange(len(rows)), best]
            hit = np.flatnonzero(score >= threshold)
            found_q.append(hit + start)
            found_r.append(best[hit])
            found_s.append(score[hit])
    empty = np.zeros(0, np.int64)
    return pd.DataFrame(
        {
            "query": np.concatenate(found_q).astype(np.int64) if found_q else empty,
            "reference": np.concatenate(found_r).astype(np.int64) if found_r else empty,
            "similarity": np.concatenate(found_s).astype(float) if found_s else np.zeros(0),
        }
    )


def find_matches(
    query_paths: Iterable[str],
    reference_paths: Iterable[str],
    threshold: float = DEFAULT_THRESHOLD,
) -> pd.DataFrame:
    """Which query images look like one of the reference images (e.g. a model's training set).

    Files that cannot be read are skipped with a log line (they match nothing).

    Args:
        query_paths: Images to check.
        reference_paths: Images to check them against.
        threshold: Correlation in (0, 1].

    Returns:
        ``query``, ``reference`` (the paths as given), ``similarity``; one row per query with
        a match, in query order.

    Raises:
        ConfigError: A threshold outside (0, 1].
        LimitError: More than :data:`MAX_IMAGES` queries or references.
    """
    threshold = check_threshold(threshold)
    queries = _within_limit(query_paths, "look-alike check of {n} images to check")
    references = _within_limit(reference_paths, "look-alike check of {n} reference images")
    q_keep, q_sigs, _ = _read_signatures(queries, "look-alike check")
    r_keep, r_sigs, _ = _read_signatures(references, "look-alike check (reference)")
    found = best_matches(q_sigs, r_sigs, threshold)
    return pd.DataFrame(
        {
            "query": [queries[i] for i in q_keep[found["query"].to_numpy()]],
            "reference": [references[i] for i in r_keep[found["reference"].to_numpy()]],
            "similarity": found["similarity"].to_numpy(),
        }
    )


@dataclass(frozen=True)
class ReferenceSet:
    """Signatures of a fixed set of images (say, a model's training images), to match scans to.

    Attributes:
        paths: The images, in order.
        signatures: float32 (N, SIGNATURE_SIZE, SIGNATURE_SIZE), read-only.
        threshold: Correlation at or above which a scan matches.
    """

    paths: tuple[str, ...]
    signatures: npt.NDArray[np.float32] = field(repr=False)
    threshold: float = DEFAULT_THRESHOLD

    @classmethod
    def from_paths(cls, paths: Iterable[str], threshold: float = DEFAULT_THRESHOLD) -> ReferenceSet:
        """Read every image (one that cannot be read is left out with a log line).

        Raises:
            ConfigError: A threshold outside (0, 1].
            LimitError: More than :data:`MAX_IMAGES` paths.
        """
        threshold = check_threshold(threshold)
        paths = _within_limit(paths, "reference set of {n} images")
        keep, signatures, _ = _read_signatures(paths, "reference set")
        signatures.setflags(write=False)
        return cls(tuple(paths[i] for i in keep), signatures, threshold)

    def match(self, scan) -> tuple[str, float] | None:
        """The reference image ``scan`` looks most like, with the correlation, or ``None``.

        Args:
            scan: A :class:`hemo.dicom.CTSlice` or :class:`hemo.images.Image2D` (not modified).
        """
        found = best_matches(signature(scan)[None], self.signatures, self.threshold)
        if found.empty:
            return None
        return self.paths[int(found["reference"].iloc[0])], float(found["similarity"].iloc[0])
