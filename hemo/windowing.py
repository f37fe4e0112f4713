"""Window Hounsfield units into [0, 1] for display and for models.

``pydicom.pixels.apply_windowing`` is a display transform into the stored-value range (DICOM PS3.3
C.11.2.1.2, whose LINEAR rule uses ``center - 0.5`` and ``width - 1``); models need float32 in
[0, 1], so the window here is the plain clip most CT pipelines (and the RSNA-2019 kernels) use:

    y = clip((hu - (center - width / 2)) / width, 0, 1)

It differs from the DICOM LINEAR rule by at most 1 / (width - 1) of the range (brain 40/80: 4 of
255 grey levels); one rule is used everywhere (model inputs, ``hemo convert``, the pages). A
file's own window is applied the same way: its VOI LUT Function (e.g. SIGMOID) and VOI LUT
Sequence are not applied.

Presets and their sources:

* ``brain`` 40/80 -- the standard brain window (Radiopaedia "CT head windows"; RSNA-2019 baseline).
* ``subdural`` 80/200 -- widened to separate thin subdural blood from the inner table
  (RSNA-2019 top solutions, e.g. Appian / 2nd place channel set; Radiopaedia gives 50-100/130-300).
* ``stroke`` 32/8 -- narrow grey/white window for early ischaemia (Radiopaedia, W:8 L:32).
* ``soft_tissue`` 40/380 -- soft tissue of scalp and neck (RSNA-2019 3-window solutions;
  Radiopaedia W:350-400 L:20-60).
* ``bone`` 600/2800 -- skull and fractures (Radiopaedia, W:2800 L:600).

The ``rsna3`` composite stacks brain, subdural and soft tissue, the three-channel input used by
many RSNA-2019 top solutions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from hemo.errors import ConfigError


@dataclass(frozen=True)
class Window:
    """A linear CT window.

    Attributes:
        name: Preset name or a free label.
        center_hu: Window centre (level) in Hounsfield units.
        width_hu: Window width in Hounsfield units; must be > 0.
    """

    name: str
    center_hu: float
    width_hu: float

    def __post_init__(self) -> None:
        if not np.isfinite(self.center_hu) or not np.isfinite(self.width_hu):
            raise ConfigError(
                f"window {self.name!r}: centre and width must be finite, got "
                f"{self.center_hu}/{self.width_hu}"
            )
        if self.width_hu <= 0:
            raise ConfigError(
                f"window {self.name!r}: width must be greater than 0 HU, got {self.width_hu}"
            )


PRESETS: dict[str, Window] = {
    w.name: w
    for w in (
        Window("brain", 40.0, 80.0),
        Window("subdural", 80.0, 200.0),
        Window("stroke", 32.0, 8.0),
        Window("soft_tissue", 40.0, 380.0),
        Window("bone", 600.0, 2800.0),
    )
}

#: Named multi-window composites (channel order matters: it is the model's channel order).
COMPOSITES: dict[str, tuple[str, ...]] = {
    "rsna3": ("brain", "subdural", "soft_tissue"),
    "brain_subdural_bone": ("brain", "subdural", "bone"),
}


def get_window(spec: str | Window | tuple[float, float]) -> Window:
    """Resolve a preset name, a ``(center_hu, width_hu)`` pair or a ``Window`` to a ``Window``.

    Args:
        spec: ``"brain"``, ``"40/80"``, ``(40, 80)`` or a ``Window``.

    Returns:
        The window.

    Raises:
        ConfigError: unknown preset name or malformed pair.
    """
    if isinstance(spec, Window):
        return spec
    if isinstance(spec, str):
        if spec in PRESETS:
            return PRESETS[spec]
        if "/" in spec:
            center, _, width = spec.partition("/")
            try:
                return Window(spec, float(center), float(width))
            except ValueError:
                pass
        raise ConfigError(
            f"unknown window {spec!r}: use one of {', '.join(PRESETS)} or 'CENTER/WIDTH' in HU"
        )
    try:
        center_hu, width_hu = spec
        return Window(
            f"{float(center_hu):g}/{float(width_hu):g}", float(center_hu), float(width_hu)
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"a window is a preset name or (center_hu, width_hu), got {spec!r}"
        ) from exc


def resolve_windows(spec: str | Window | tuple | list) -> tuple[Window, ...]:
    """Resolve a composite name, one window, or a sequence of windows to a tuple of windows.

    Args:
        spec: ``"rsna3"``, ``"brain"``, ``"40/80"``, ``["brain", (80, 200)]`` ...

    Returns:
        One ``Window`` per output channel.
    """
    if isinstance(spec, str) and spec in COMPOSITES:
        return tuple(PRESETS[name] for name in COMPOSITES[spec])
    if isinstance(spec, str | Window):
        try:
            return (get_window(spec),)
        except ConfigError as exc:
            if isinstance(spec, str):  # here a composite is as good an answer as a preset
                raise ConfigError(
                    f"{exc.reason}, or a composite: {', '.join(COMPOSITES)}", exc.source
                ) from exc
            raise
    items = list(spec)
    if len(items) == 2 and all(isinstance(v, int | float) for v in items):
        return (get_window(tuple(items)),)
    if not items:
        raise ConfigError("at least one window is needed")
    return tuple(get_window(item) for item in items)


def window(hu: npt.ArrayLike, center_hu: float, width_hu: float) -> npt.NDArray[np.float32]:
    """Map Hounsfield units linearly to [0, 1] through one window.

    Args:
        hu: Any-shape array of Hounsfield units. Not modified.
        center_hu: Window centre in HU.
        width_hu: Window width in HU, > 0.

    Returns:
        float32 array of ``hu``'s shape with values in [0, 1]; NaN inputs map to 0.

    Raises:
        ConfigError: ``width_hu`` is not > 0 or a parameter is not finite.
    """
    w = Window("window", float(center_hu), float(width_hu))
    arr = np.asarray(hu, dtype=np.float32)
    low = np.float32(w.center_hu - w.width_hu / 2.0)
    out = (arr - low) / np.float32(w.width_hu)
    out = np.nan_to_num(out, nan=0.0, posinf=1.0, neginf=0.0)
    return np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)


def multi_window(
    hu: npt.ArrayLike, windows: str | Window | tuple | list = "rsna3"
) -> npt.NDArray[np.float32]:
    """Stack several windows of one slice as channels.

    Args:
        hu: (H, W) array of Hounsfield units. Not modified.
        windows: Anything :func:`resolve_windows` accepts.

    Returns:
        float32 (H, W, C) in [0, 1], one channel per window in the given order.
    """
    arr = np.asarray(hu, dtype=np.float32)
    return np.stack([window(arr, w.center_hu, w.width_hu) for w in resolve_windows(windows)], -1)
