"""Tests for hemo.lookalike: signatures, pairs, groups, bad files, limits, the real Kaggle set."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from hemo import lookalike
from hemo.commands import crossval as crossval_command
from hemo.errors import ConfigError, LimitError
from hemo.images import read_image
from hemo.lookalike import (
    ReferenceSet,
    best_matches,
    find_lookalikes,
    find_matches,
    group_weights,
    link_groups,
    signature,
    similar_pairs,
    similarity,
)


def _head(seed: int, side: int = 160) -> np.ndarray:
    """A disc with a smooth texture (uint8): heads with different seeds do not look alike."""
    noise = np.random.default_rng(seed).normal(0, 1, (side, side))
    texture = cv2.GaussianBlur(noise, (0, 0), 3)
    texture *= 45 / texture.std()
    disc = np.zeros((side, side), np.uint8)
    cv2.circle(disc, (side // 2, side // 2), side // 2 - 6, 1, -1)
    return np.where(disc > 0, np.clip(110 + texture, 20, 200), 0).astype(np.uint8)


def _png(path: Path, image: np.ndarray) -> str:
    cv2.imwrite(str(path), image)
    return str(path)


def test_signature_survives_resize_and_mirror_but_not_another_head(tmp_path: Path) -> None:
    """The same picture at 60 % size, or mirrored, correlates > 0.95; another head does not."""
    head = _head(1)
    original = signature(read_image(_png(tmp_path / "a.png", head)))
    smaller = signature(read_image(_png(tmp_path / "b.png", cv2.resize(head, (96, 96)))))
    mirrored = signature(read_image(_png(tmp_path / "c.png", head[:, ::-1])))
    other = signature(read_image(_png(tmp_path / "d.png", _head(2))))
    assert original.shape == (lookalike.SIGNATURE_SIZE,) * 2 and original.dtype == np.float32
    assert np.linalg.norm(original) == pytest.approx(1.0, abs=1e-5)
    assert similarity(original, smaller) > 0.95
    assert similarity(original, mirrored) > 0.99
    assert np.sum(original * mirrored) < 0.9  # found through the mirror, not as is
    assert similarity(original, other) < 0.8


def test_signature_of_a_blank_image_is_zero(tmp_path: Path) -> None:
    """A black image has no signature to correlate (zeros, no division by zero)."""
    blank = signature(read_image(_png(tmp_path / "z.png", np.zeros((40, 40), np.uint8))))
    assert not blank.any()


def test_similar_pairs_match_brute_force_across_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocked pair search finds exactly the pairs a loop over every pair finds."""
    monkeypatch.setattr(lookalike, "BLOCK_ROWS", 3)
    rng = np.random.default_rng(0)
    base = rng.normal(size=(4, 8, 8))
    sigs = np.concatenate([base, base + rng.normal(0, 0.2, base.shape), base[:, :, ::-1]])
    sigs -= sigs.mean(axis=(1, 2), keepdims=True)
    sigs /= np.linalg.norm(sigs.reshape(len(sigs), -1), axis=1)[:, None, None]
    found = similar_pairs(sigs.astype(np.float32), 0.9)
    expected = {
        (a, b)
        for a in range(len(sigs))
        for b in range(a + 1, len(sigs))
        if similarity(sigs[a], sigs[b]) >= 0.9
    }
    assert set(zip(found["a"], found["b"], strict=True)) == expected
    assert len(expected) == 12  # each base with its noisy copy and its mirror, both ways
    assert found["similarity"].is_monotonic_decreasing


def test_best_matches_pick_the_most_similar_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each query gets its most similar reference (mirror included) when it reaches the
    threshold, in blocks or not; an empty side gives no rows."""
    monkeypatch.setattr(lookalike, "BLOCK_ROWS", 2)
    rng = np.random.default_rng(1)
    refs = rng.normal(size=(4, 8, 8))
    refs -= refs.mean(axis=(1, 2), keepdims=True)
    refs /= np.linalg.norm(refs.reshape(4, -1), axis=1)[:, None, None]
    queries = np.stack([refs[2][:, ::-1], refs[0] * 0.9 + refs[1] * 0.1, -refs[3]])
    queries /= np.linalg.norm(queries.reshape(3, -1), axis=1)[:, None, None]
    found = best_matches(queries.astype(np.float32), refs.astype(np.float32), 0.9)
    assert found[["query", "reference"]].values.tolist() == [[0, 2], [1, 0]]
    for q, r, score in found.itertuples(index=False):
        assert score == pytest.approx(similarity(queries[q], refs[r]), abs=1e-5)
        assert score == pytest.approx(max(similarity(queries[q], x) for x in refs), abs=1e-5)
    assert best_matches(queries[:0], refs, 0.9).empty and best_matches(queries, refs[:0], 0.9).empty


def test_find_matches_names_the_training_image_and_skips_bad_files(tmp_path: Path) -> None:
    """A resized copy is matched to its original by path; another head and a corrupt file are
    not (the corrupt one is skipped, not fatal)."""
    references = [_png(tmp_path / f"train{i}.png", _head(i)) for i in range(3)]
    copy = _png(tmp_path / "copy.png", cv2.resize(_head(2), (120, 120)))
    other = _png(tmp_path / "other.png", _head(9))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    found = find_matches([other, str(bad), copy], references)
    assert found[["query", "reference"]].values.tolist() == [[copy, references[2]]]
    assert found["similarity"].iloc[0] > 0.95


def test_reference_set_matches_a_scan_to_its_training_image(tmp_path: Path) -> None:
    """A reference set names the image a scan copies; another head matches nothing; an
    unreadable reference is left out; its signatures cannot be changed."""
    references = [_png(tmp_path / f"train{i}.png", _head(i)) for i in range(3)]
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n")
    reference = ReferenceSet.from_paths([*references, str(bad)])
    assert reference.paths == tuple(references)
    assert not reference.signatures.flags.writeable
    copy = read_image(_png(tmp_path / "copy.png", cv2.resize(_head(1), (120, 120))))
    path, score = reference.match(copy)
    assert path == references[1] and score > 0.95
    assert reference.match(read_image(_png(tmp_path / "new.png", _head(7)))) is None
    assert ReferenceSet.from_paths([]).match(copy) is None


def test_link_groups_chains_pairs_and_patients() -> None:
    """Groups are connected components of the pairs plus equal patient labels."""
    pairs = pd.DataFrame({"a": [0, 3], "b": [1, 4]})
    assert link_groups(6, pairs).tolist() == [0, 0, 1, 2, 2, 3]
    patients = ["p", None, "q", "p", float("nan"), "q"]
    assert link_groups(6, pairs, patients).tolist() == [0, 0, 1, 0, 0, 1]
    assert link_groups(3, pairs.iloc[:0]).tolist() == [0, 1, 2]


def test_find_lookalikes_reports_a_bad_file_and_groups_the_rest(tmp_path: Path) -> None:
    """A corrupt file is its own group with its error; the copies among the others are found."""
    paths = [_png(tmp_path / f"{i}.png", _head(i)) for i in range(3)]
    paths.append(_png(tmp_path / "copy.png", cv2.resize(_head(1), (100, 100))))
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    found = find_lookalikes([*paths[:2], str(bad), *paths[2:]])
    assert found.groups.tolist() == [0, 1, 2, 3, 1]
    assert [i for i, _ in found.failed] == [2]
    assert "broken.png" in found.failed[0][1]
    assert found.pairs[["a", "b"]].values.tolist() == [[1, 4]]
    assert (found.n_groups, found.n_grouped) == (4, 2)
    nothing = find_lookalikes([str(bad), str(bad)])
    assert nothing.groups.tolist() == [0, 1] and nothing.pairs.empty and len(nothing.failed) == 2


def test_find_lookalikes_limits_and_threshold(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Too many images or a threshold outside (0, 1] are refused with what to do."""
    monkeypatch.setattr(lookalike, "MAX_IMAGES", 2)
    with pytest.raises(LimitError, match="look-alike check of 3 images: at most 2"):
        find_lookalikes(["a", "b", "c"])
    for bad in (0, -0.1, 1.01, "high"):
        with pytest.raises(ConfigError, match="look-alike threshold"):
            find_lookalikes([], bad)


def test_cli_default_is_the_module_default() -> None:
    """``hemo crossval --lookalike`` defaults to the module's threshold (kept apart so the
    parser builds without numpy)."""
    assert crossval_command.DEFAULT_LOOKALIKE == lookalike.DEFAULT_THRESHOLD


def test_real_kaggle_set_groups_its_copies(head_ct_dir: Path) -> None:
    """On the real Kaggle images the pictures that appear twice or three times at other sizes
    are grouped, and no group is larger than a run of six neighbouring slices."""
    files = sorted((head_ct_dir / "head_ct").glob("*.png"))
    found = find_lookalikes(files)
    group = {f.stem: g for f, g in zip(files, found.groups, strict=True)}
    for same in (("005", "022", "058"), ("004", "057"), ("009", "065"), ("010", "066")):
        assert len({group[i] for i in same}) == 1, same
    for same in (("011", "061"), ("012", "030")):
        assert len({group[i] for i in same}) == 1, same
    assert group["000"] != group["100"]
    _, sizes = np.unique(found.groups, return_counts=True)
    assert sizes.max() <= 6
    assert 40 <= found.n_grouped <= 90 and not found.failed


def test_repeated_checks_reuse_the_pairs_until_a_file_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same files asked about twice are read once, by the look-alike check and by a
    reference set alike; a rewritten file is read again, and only it; the signature cache
    keeps at most SIGNATURE_CACHE_IMAGES files."""
    import os

    reads: list[str] = []
    real = lookalike._read_signature
    monkeypatch.setattr(lookalike, "_read_signature", lambda p: reads.append(p) or real(p))
    original = _png(tmp_path / "a.png", _head(3))
    copy = _png(tmp_path / "b.png", cv2.resize(_head(3), (120, 120)))
    assert find_lookalikes([original, copy]).groups.tolist() == [0, 0]
    assert find_lookalikes([original, copy]).groups.tolist() == [0, 0]
    assert len(reads) == 2
    assert ReferenceSet.from_paths([copy, original]).paths == (copy, original)
    assert len(reads) == 2
    cv2.imwrite(copy, cv2.resize(_head(4), (120, 120)))
    os.utime(copy, ns=(1, 1))  # a new stamp even on a coarse clock
    assert find_lookalikes([original, copy]).groups.tolist() == [0, 1]
    assert reads[2:] == [copy]
    monkeypatch.setattr(lookalike, "SIGNATURE_CACHE_IMAGES", 1)
    third = _png(tmp_path / "c.png", _head(5))
    ReferenceSet.from_paths([original, third])
    ReferenceSet.from_paths([original])  # pushed out by the third file: read again
    assert reads[3:] == [third, original]


def test_group_weights_count_each_group_once(tmp_path: Path) -> None:
    """A picture stored three times weighs as much as one other image; rows with a patient id
    are not compared; the weights average 1."""
    paths = [_png(tmp_path / "a.png", _head(1))]
    paths += [
        _png(tmp_path / f"a{k}.png", cv2.resize(_head(1), (s, s))) for k, s in ((1, 120), (2, 140))
    ]
    paths += [_png(tmp_path / f"o{k}.png", _head(10 + k)) for k in range(2)]
    weights = group_weights(paths)
    assert weights.dtype == np.float32 and weights.mean() == pytest.approx(1.0)
    np.testing.assert_allclose(weights, np.array([1 / 3] * 3 + [1, 1]) * 5 / 3, rtol=1e-6)
    with_ids = group_weights(paths, ["p", None, None, None, None])
    np.testing.assert_allclose(with_ids, np.array([1, 0.5, 0.5, 1, 1]) * 5 / 4, rtol=1e-6)
    assert group_weights([]).shape == (0,)
