"""hemo.windowing: known values, NaN, invalid windows, presets and purity."""

from __future__ import annotations

import numpy as np
import pytest

from hemo.errors import ConfigError
from hemo.windowing import PRESETS, get_window, multi_window, resolve_windows, window


def test_brain_window_known_values():
    """40/80 maps 0, 40 and 80 HU to 0, 0.5 and 1 and clips outside."""
    out = window(np.array([-1000, 0, 20, 40, 80, 1000]), 40, 80)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [0, 0, 0.25, 0.5, 1, 1])


def test_nan_and_inf():
    """NaN maps to 0, +inf to 1, -inf to 0."""
    out = window(np.array([np.nan, np.inf, -np.inf]), 40, 80)
    assert out.tolist() == [0.0, 1.0, 0.0]


@pytest.mark.parametrize("width", [0, -80])
def test_width_must_be_positive(width):
    """A width <= 0 is refused with the rule."""
    with pytest.raises(ConfigError, match=f"width must be greater than 0 HU, got {float(width)}"):
        window(np.zeros(3), 40, width)


def test_non_finite_window_refused():
    """A NaN centre is refused."""
    with pytest.raises(ConfigError, match="centre and width must be finite"):
        window(np.zeros(3), float("nan"), 80)


def test_input_not_mutated():
    """The caller's array is unchanged and not returned."""
    hu = np.array([[-50.0, 40.0, 200.0]], dtype=np.float32)
    before = hu.copy()
    out = window(hu, 40, 80)
    np.testing.assert_array_equal(hu, before)
    assert not np.shares_memory(out, hu)


def test_presets_and_parsing():
    """Presets carry their published values; pairs and 'C/W' strings parse; unknown names fail."""
    assert (PRESETS["brain"].center_hu, PRESETS["brain"].width_hu) == (40.0, 80.0)
    assert (PRESETS["bone"].center_hu, PRESETS["bone"].width_hu) == (600.0, 2800.0)
    assert get_window("50/130").width_hu == 130.0 and get_window((80, 200)).center_hu == 80.0
    assert [w.name for w in resolve_windows("rsna3")] == ["brain", "subdural", "soft_tissue"]
    with pytest.raises(ConfigError, match="unknown window 'lungs'"):
        get_window("lungs")
    # where a composite would do (hemo convert --window), the error lists the composites too
    with pytest.raises(ConfigError, match="or a composite: rsna3, brain_subdural_bone$"):
        resolve_windows("lungs")


def test_multi_window_stacks_channels():
    """multi_window gives (H, W, C) in the composite's order."""
    hu = np.full((4, 5), 80.0)
    out = multi_window(hu, "rsna3")
    assert out.shape == (4, 5, 3)
    np.testing.assert_allclose(out[0, 0], [1.0, 0.5, (80 - (40 - 190)) / 380], rtol=1e-6)


def test_window_pairs_in_a_list_are_named_centre_then_width() -> None:
    """``[40, 80]`` is one window named ``40/80`` (centre, then width), as ``(40, 80)``; an empty
    list is refused by name (it failed later, inside numpy)."""
    (pair,) = resolve_windows([40, 80])
    assert pair.name == "40/80" and get_window((40, 80)).name == "40/80"
    assert (pair.center_hu, pair.width_hu) == (40, 80)
    with pytest.raises(ConfigError, match="at least one window"):
        resolve_windows([])
