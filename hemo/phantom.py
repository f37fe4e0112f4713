"""Synthetic head-CT phantoms in Hounsfield units, with the five RSNA hemorrhage subtypes.

A phantom *study* is one synthetic head: an outline (scalp, skull with diploe, brain) that
shrinks toward the vertex, cortex with sulci, white matter, deep grey nuclei, lateral and third
ventricles that come and go with the slice level, basal cisterns and Sylvian fissures at low
levels, the interhemispheric fissure with the falx. Head size, ellipticity, position, in-plane
rotation, skull thickness, atrophy and tissue values vary per study; slices of one study share
their anatomy. Bleeds are 3-D objects fixed in the head frame, so a bleed spans a run of
contiguous slices at a consistent place:

* epidural: biconvex lens at the inner table, short arc (it does not cross sutures);
* subdural: crescent along the inner table, long arc, concave toward the brain;
* intraparenchymal: irregular blob in the parenchyma with a hypodense edema halo;
* intraventricular: blood layering in the dependent (posterior, image-down) part of the
  ventricles below a fluid level that is horizontal in the image (the patient lies supine);
* subarachnoid: thin blood filling sulci and the surface CSF over the convexity, or the basal
  cisterns and Sylvian fissures.

Acute blood is 50-90 HU. The image is blurred by a Gaussian point-spread function, gets slightly
correlated Gaussian noise, and is cut to a circular scan field of view. Every random choice comes
from one ``numpy.random.Generator``, so a seed fixes every byte, including the DICOM files
(UIDs derived from the seed, fixed dates).

DICOM encoding (PS3.3 A.3 CT Image IOD; PS3.5 explicit VR little endian): unsigned 16-bit
stored values (PixelRepresentation 0, BitsAllocated = BitsStored = 16, so the RSNA-2019 12-bit
RescaleIntercept fault cannot arise), RescaleIntercept -1024, RescaleSlope 1, so stored = HU +
1024. Pixels outside the scan field hold the stored value 0 and are marked with
PixelPaddingValue (0028,0120) = 0; inside the field HU are clipped to >= -1023 so no real pixel
can collide with the padding value. ``PhantomSlice.hu`` holds HU_AIR outside the field, which is
what a reader that maps padding to air returns.
"""

from __future__ import annotations

import hashlib
import logging
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import pandas as pd
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian, generate_uid

from hemo.config import HU_AIR, HU_CEIL, RSNA_LABELS, SUBTYPES
from hemo.errors import ConfigError

log = logging.getLogger(__name__)

BoolArray = npt.NDArray[np.bool_]
FloatArray = npt.NDArray[np.float32]

# Tissue values (HU) -----------------------------------------------------------------------------
HU_SOFT_TISSUE = 40.0  # skin, galea
HU_FAT = -90.0  # subcutaneous fat of the scalp
HU_CORTICAL_BONE = (1250.0, 1750.0)  # range of a study's inner/outer table value
HU_DIPLOE = (450.0, 850.0)  # range of a study's diploe value
HU_DIPLOE_MOTTLE = 180.0  # sd of the diploe texture
HU_GREY = (36.0, 40.0)  # range of a study's grey-matter value
HU_WHITE = (26.0, 30.0)  # range of a study's white-matter value
HU_DEEP_GREY_OFFSET = -2.0  # basal ganglia / thalami relative to cortex
HU_CSF = (5.0, 12.0)  # range of a study's CSF value
HU_FALX = 75.0  # the dense falx cerebri
HU_TISSUE_TEXTURE = 1.5  # sd of slow tissue inhomogeneity
HU_BLOOD = (60.0, 80.0)  # mean of one acute bleed; texture keeps it within 50-90
HU_BLOOD_TEXTURE = 4.0
HU_EDEMA = (15.0, 20.0)  # perihaematomal edema
HU_NOISE_SD = (4.0, 8.0)  # quantum noise sd of a study
#: Lowest HU stored inside the scan field (stored value 1; 0 is the padding value).
HU_MIN_STORED = -1023.0

# Imaging ----------------------------------------------------------------------------------------
PSF_SIGMA_PX = 0.7  # Gaussian point-spread function
NOISE_CORRELATION_SIGMA_PX = 0.6  # blur of white noise -> slightly correlated noise
PIXEL_SPACING_512_MM = (0.42, 0.49)  # range of pixel spacing at 512 px (scaled for other sizes)
REFERENCE_SIZE_PX = 512
SLICE_THICKNESS_MM = 5.0
DEFAULT_SLICES = 6
DEFAULT_SIZE_PX = 512
MIN_SIZE_PX = 64

# Head geometry (mm, in the head frame: u to the image right, v posterior = image down) ---------
HEAD_SEMI_LATERAL_MM = (68.0, 78.0)  # outer semi-axis across, at the widest level
HEAD_SEMI_AP_MM = (84.0, 95.0)  # outer semi-axis front to back
HEAD_OFFSET_MM = 8.0  # max displacement of the head centre from the image centre
HEAD_ROTATION_DEG = 12.0  # max in-plane rotation
OUTLINE_RIPPLE = 0.025  # amplitude of the low-order Fourier ripple of the outline
SCALP_MM = (4.0, 6.5)
TEMPORALIS_MM = 5.0  # extra soft tissue over the temples at mid levels
SKULL_MM = (4.0, 6.5)  # mean skull thickness of a study
TEMPORAL_THINNING = 0.4  # the skull over the temples is this much thinner
TABLE_FRACTION = 0.3  # each table is this fraction of the skull thickness
MIN_DIPLOE_MM = 3.5  # thinner skull is all cortical bone

# Slice levels (mm above the reference level, the floor of the anterior cranial fossa) ----------
Z_LOWEST_MM = 12.0
Z_HIGHEST_MM = 100.0
Z_WIDEST_MM = 40.0  # the head is widest here
Z_VERTEX_MM = 118.0  # outer vertex
LOW_SHRINK = 0.08  # the outline at Z_LOWEST_MM is this much smaller than at Z_WIDEST_MM
VENTRICLE_Z_MM = (27.0, 72.0)  # lateral ventricles exist between these levels
VENTRICLE_SPLIT_Z_MM = 40.0  # below, frontal and occipital horns are cut apart
THIRD_VENTRICLE_Z_MM = (20.0, 40.0)
DEEP_GREY_Z_MM = (24.0, 50.0)
CISTERN_Z_MM = (8.0, 30.0)
SYLVIAN_Z_MM = (12.0, 42.0)

# Brain (mm unless said) --------------------------------------------------------------------------
SURFACE_CSF_MM = (0.8, 2.2)  # subarachnoid space over the convexity, young -> atrophic
CORTEX_MM = 2.8  # cortical ribbon
SULCUS_WIDTH_MM = (1.1, 2.4)  # young -> atrophic
SULCUS_DEPTH_MM = (9.0, 20.0)
SULCUS_COUNT = (34, 46)  # sulci around the circumference
SULCUS_WIGGLE = 0.45  # amplitude (in sulcus spacings) of the meander of a sulcus
SULCUS_MAX_DEPTH_FRACTION = 0.45  # sulci never reach deeper than this fraction of the radius
FISSURE_MM = (0.8, 2.0)  # half-width of the interhemispheric fissure, young -> atrophic
FALX_HALF_MM = 0.5
VENTRICLE_HALF_WIDTH_MM = (3.0, 9.0)  # young -> atrophic
SEPTUM_HALF_MM = 1.2
MIN_FEATURE_PX = 1.2  # thin CSF spaces are never drawn thinner than this
FIELD_CORRELATION_MM = 14.0  # grain of the slow random fields
DIPLOE_GRAIN_MM = 2.0
MIN_VENTRICLE_MM2 = 80.0  # less ventricle area: no intraventricular bleed on that slice

# Bleeds -----------------------------------------------------------------------------------------
EPIDURAL_ARC_MM = (35.0, 70.0)
EPIDURAL_THICK_MM = (8.0, 18.0)
SUBDURAL_ARC_MM = (90.0, 170.0)
SUBDURAL_THICK_MM = (5.0, 12.0)
MIN_BLEED_PX = 3.0  # the thickest part of an extra-axial bleed is at least this many pixels
MIN_BLOOD_LINE_PX = 2.0  # sulci filled with blood are at least this wide
MIN_MASK_MM2 = 10.0  # a bleed smaller than this on a slice is left out of that slice
MIN_MASK_PX = 4
IPH_RADIUS_MM = (6.0, 15.0)
IPH_EDEMA_MM = (2.0, 5.5)
IPH_DEPTH_FRACTION = (0.35, 0.7)  # centre radius as a fraction of the local brain radius
IVH_LEVEL_QUANTILE = (0.45, 0.7)  # fluid level among ventricle rows of the central slice
SAH_RADIUS_MM = (28.0, 45.0)
SAH_WIDEN = 1.6  # blood distends the sulci it fills
SAH_BASAL_RADIUS_MM = 55.0
SPAN_FLOOR = 0.35  # a bleed keeps at least this fraction of its size on its last slices
MAX_SPAN_SLICES = 4

# Skull base (only in studies drawn with ``skull_base``; levels below Z_LOWEST_MM) -----------------
Z_SKULL_BASE_LOWEST_MM = -24.0  # lowest first level of a skull-base study
Z_SKULL_BASE_START_MM = 4.0  # highest first level of a skull-base study
SKULL_BASE_TOP_MM = 14.0  # no skull-base structure above this level
ORBITAL_ROOF_Z_MM = (-2.0, SKULL_BASE_TOP_MM)  # partial volume of orbital roofs over the fossa
ORBITAL_ROOF_BONE_FRACTION = 0.35  # at most this fraction of a roof pixel is bone
FACE_Z_MM = (-40.0, 0.0)  # orbits and ethmoid cells replace the front of the head
FACE_FRONT = 0.55  # the face starts this fraction of the AP semi-axis in front of the centre
GLOBE_RADIUS_MM = (10.5, 12.5)
HU_GLOBE = 12.0
HU_ORBIT_FAT = -85.0
ETHMOID_CELL_MM = 5.0
SPHENOID_Z_MM = (-40.0, 6.0)  # greater wings, sinus, dorsum and clivus
PETROUS_Z_MM = (-40.0, 8.0)
PETROUS_HALF_WIDTH_MM = (2.0, 4.0)  # thin at the ridge, wide below
PARTIAL_VOLUME_MM = 2.5  # blurred rim of bone that is part bone, part brain (blood-like HU)
MASTOID_Z_MM = (-40.0, -6.0)
MASTOID_RADIUS_MM = 11.0
FOURTH_VENTRICLE_Z_MM = (-22.0, 2.0)
HU_SINUS_AIR = -950.0
SKULL_BASE_STREAM = 2  # seed-sequence key of the per-study skull-base / vertex draw
#: Range of the top level of a study drawn with ``vertex`` (mm): the top slices cut the skull
#: tangentially (levels above Z_HIGHEST_MM use nested scalp / outer / inner table domes).
VERTEX_TOP_MM = (Z_VERTEX_MM - 9.0, Z_VERTEX_MM - 2.0)

# Dataset writing --------------------------------------------------------------------------------
PADDING_STORED = 0
RESCALE_INTERCEPT = -1024.0
RESCALE_SLOPE = 1.0
WINDOW_CENTER_HU = 40.0
WINDOW_WIDTH_HU = 80.0
STUDY_DATE = "20000101"
STUDY_TIME = "080000"
UID_NAMESPACE = "hemo-phantom-v1"
IMPLEMENTATION_VERSION = "HEMO_PHANTOM_1"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ID_HEX_DIGITS = 9
#: Probabilities of 1, 2 and 3 subtypes in a positive study.
SUBTYPE_COUNT_P = (0.6, 0.3, 0.1)
CSV_NAME = "stage_2_train.csv"
DICOM_DIR = "stage_2_train"
MASK_DIR = "masks"
INDEX_NAME = "index.parquet"
SOURCE = "phantom"


@dataclass(frozen=True, eq=False)
class PhantomSlice:
    """One synthetic axial slice.

    Attributes:
        hu: float32 (H, W) Hounsfield units, integers as stored in the DICOM; HU_AIR outside the
            scan field. Read-only.
        masks: subtype -> bool (H, W), one entry for every subtype in ``SUBTYPES`` (all False
            where the slice has none of it). Read-only.
        z_mm: Slice position along the patient axis (ImagePositionPatient z) in mm.
        pixel_spacing_mm: Row and column spacing in mm (square pixels).
        anatomy: bool (H, W) regions of the healthy anatomy, keys ``bone``, ``brain``
            (everything inside the inner table), ``ventricles``, ``csf`` (all CSF spaces) and
            ``fov`` (the scan field). Read-only.
    """

    hu: FloatArray
    masks: Mapping[str, BoolArray]
    z_mm: float
    pixel_spacing_mm: float
    anatomy: Mapping[str, BoolArray] = field(default_factory=dict)

    @property
    def labels(self) -> dict[str, int]:
        """RSNA labels of the slice: ``any`` and each subtype, 0 or 1."""
        per_subtype = {name: int(self.masks[name].any()) for name in SUBTYPES}
        return {"any": int(any(per_subtype.values())), **per_subtype}


def mask_bits(masks: Mapping[str, BoolArray]) -> npt.NDArray[np.uint8]:
    """Pack subtype masks into one bitmask image.

    Args:
        masks: subtype -> bool (H, W); subtypes not in the mapping count as empty.

    Returns:
        uint8 (H, W) with bit ``i`` set where ``SUBTYPES[i]`` is present.
    """
    shape = next(iter(masks.values())).shape
    bits = np.zeros(shape, dtype=np.uint8)
    for i, name in enumerate(SUBTYPES):
        if name in masks:
            bits |= masks[name].astype(np.uint8) << np.uint8(i)
    return bits


def unpack_mask_bits(bits: npt.ArrayLike) -> dict[str, BoolArray]:
    """Inverse of :func:`mask_bits`.

    Args:
        bits: uint8 (H, W) bitmask, e.g. read from ``masks/ID_<id>.png``.

    Returns:
        subtype -> bool (H, W) for every subtype in ``SUBTYPES``.
    """
    arr = np.asarray(bits, dtype=np.uint8)
    return {name: (arr >> np.uint8(i) & 1).astype(bool) for i, name in enumerate(SUBTYPES)}


# Study parameters -------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class _Head:
    """Per-study anatomy and imaging parameters plus the fixed pixel grid in the head frame."""

    size: int
    spacing_mm: float
    semi_lateral_mm: float
    semi_ap_mm: float
    scalp_mm: float
    skull_mm: float
    atrophy: float  # 0 young .. 1 atrophic
    sulcus_count: int
    sulcus_depths_mm: npt.NDArray[np.float64]  # one depth per sulcus index
    hu_grey: float
    hu_white: float
    hu_csf: float
    hu_cortical: float
    hu_diploe: float
    noise_sd: float
    # Fixed per study (H, W) grids.
    x_mm: FloatArray  # image coordinates from the image centre
    y_mm: FloatArray
    u_mm: FloatArray  # head frame
    v_mm: FloatArray
    rho_mm: FloatArray
    theta: FloatArray
    outline_mm: FloatArray  # outer scalp radius at the widest level, per pixel angle
    skull_shape: FloatArray  # skull thickness multiplier per pixel angle
    fov: BoolArray
    wiggle: tuple[FloatArray, FloatArray]  # slow fields for the sulcal meander
    texture: tuple[FloatArray, FloatArray]  # slow fields for tissue texture


def _smooth_field(
    rng: np.random.Generator, size: int, fov_mm: float, grain_mm: float
) -> FloatArray:
    """A zero-mean unit-sd random field with correlation length ``grain_mm``.

    Args:
        rng: Source of randomness.
        size: Output side in pixels.
        fov_mm: Physical side of the output in mm.
        grain_mm: Correlation length in mm.

    Returns:
        float32 (size, size).
    """
    cells = max(2, int(round(fov_mm / grain_mm)))
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    fine = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    sd = float(fine.std())
    return (fine - fine.mean()) / (sd if sd > 0 else 1.0)


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    """One draw from U(bounds[0], bounds[1])."""
    return float(rng.uniform(bounds[0], bounds[1]))


def _make_head(rng: np.random.Generator, size: int) -> _Head:
    """Draw one study's anatomy and build its head-frame grids."""
    spacing = _uniform(rng, PIXEL_SPACING_512_MM) * REFERENCE_SIZE_PX / size
    fov_mm = size * spacing
    coords = (np.arange(size, dtype=np.float32) - (size - 1) / 2.0) * np.float32(spacing)
    x_mm, y_mm = np.meshgrid(coords, coords)
    center = rng.uniform(-HEAD_OFFSET_MM, HEAD_OFFSET_MM, size=2)
    angle = math.radians(float(rng.uniform(-HEAD_ROTATION_DEG, HEAD_ROTATION_DEG)))
    cos_a, sin_a = np.float32(math.cos(angle)), np.float32(math.sin(angle))
    dx, dy = x_mm - np.float32(center[0]), y_mm - np.float32(center[1])
    u_mm = cos_a * dx + sin_a * dy
    v_mm = -sin_a * dx + cos_a * dy
    rho = np.hypot(u_mm, v_mm)
    theta = np.arctan2(v_mm, u_mm)

    semi_lat = _uniform(rng, HEAD_SEMI_LATERAL_MM)
    semi_ap = _uniform(rng, HEAD_SEMI_AP_MM)
    ellipse = (
        semi_lat
        * semi_ap
        / np.sqrt((semi_ap * np.cos(theta)) ** 2 + (semi_lat * np.sin(theta)) ** 2)
    )
    ripple = np.zeros_like(theta)
    for order in (2, 3, 4):
        amp = rng.normal(0.0, OUTLINE_RIPPLE / order)
        phase = rng.uniform(0, 2 * np.pi)
        ripple += np.float32(amp) * np.cos(order * theta + np.float32(phase))
    # Frontal bossing: a slightly flatter, wider front (v < 0) than back.
    outline = (ellipse * (1.0 + ripple)).astype(np.float32)
    skull_shape = 1.0 - TEMPORAL_THINNING * np.cos(theta) ** 4
    for order in (2, 3):
        skull_shape += np.float32(rng.normal(0.0, 0.08)) * np.cos(
            order * theta + np.float32(rng.uniform(0, 2 * np.pi))
        )
    atrophy = float(rng.beta(1.5, 3.0))
    count = int(rng.integers(SULCUS_COUNT[0], SULCUS_COUNT[1] + 1))
    depths = rng.uniform(SULCUS_DEPTH_MM[0], SULCUS_DEPTH_MM[1], size=count)
    fov = (x_mm**2 + y_mm**2) <= (fov_mm / 2.0) ** 2
    return _Head(
        size=size,
        spacing_mm=spacing,
        semi_lateral_mm=semi_lat,
        semi_ap_mm=semi_ap,
        scalp_mm=_uniform(rng, SCALP_MM),
        skull_mm=_uniform(rng, SKULL_MM),
        atrophy=atrophy,
        sulcus_count=count,
        sulcus_depths_mm=depths,
        hu_grey=_uniform(rng, HU_GREY),
        hu_white=_uniform(rng, HU_WHITE),
        hu_csf=_uniform(rng, HU_CSF),
        hu_cortical=_uniform(rng, HU_CORTICAL_BONE),
        hu_diploe=_uniform(rng, HU_DIPLOE),
        noise_sd=_uniform(rng, HU_NOISE_SD),
        x_mm=x_mm,
        y_mm=y_mm,
        u_mm=u_mm,
        v_mm=v_mm,
        rho_mm=rho,
        theta=theta,
        outline_mm=outline,
        skull_shape=skull_shape.astype(np.float32),
        fov=fov,
        wiggle=(
            _smooth_field(rng, size, fov_mm, FIELD_CORRELATION_MM),
            _smooth_field(rng, size, fov_mm, FIELD_CORRELATION_MM),
        ),
        texture=(
            _smooth_field(rng, size, fov_mm, FIELD_CORRELATION_MM / 2),
            _smooth_field(rng, size, fov_mm, FIELD_CORRELATION_MM / 2),
        ),
    )


def _lerp(t: float, lo: float, hi: float) -> float:
    """``lo + t * (hi - lo)``."""
    return lo + t * (hi - lo)


def _bell(z: float, bounds: tuple[float, float]) -> float:
    """Smooth 0..1..0 profile over ``bounds`` (0 outside): sin(pi * t)."""
    lo, hi = bounds
    if not lo < z < hi:
        return 0.0
    return math.sin(math.pi * (z - lo) / (hi - lo))


def _scale_at(z: float) -> float:
    """Outline scale at level ``z``: 1 at the widest level, shrinking to the vertex."""
    if z <= Z_WIDEST_MM:
        return 1.0 - LOW_SHRINK * (Z_WIDEST_MM - z) / (Z_WIDEST_MM - Z_LOWEST_MM)
    t = (z - Z_WIDEST_MM) / (Z_VERTEX_MM - Z_WIDEST_MM)
    return math.sqrt(max(1.0 - t * t, 0.05))


def _phase(z: float) -> tuple[np.float32, np.float32]:
    """Weights mixing two slow fields so that textures drift smoothly with z."""
    angle = z / 25.0
    return np.float32(math.cos(angle)), np.float32(math.sin(angle))


def _ellipse(
    u: FloatArray, v: FloatArray, cu: float, cv: float, au: float, av: float, rot: float = 0.0
) -> BoolArray:
    """Pixels inside an ellipse (mm) centred at (cu, cv), semi-axes (au, av), rotated ``rot`` rad."""
    du, dv = u - np.float32(cu), v - np.float32(cv)
    if rot:
        c, s = np.float32(math.cos(rot)), np.float32(math.sin(rot))
        du, dv = c * du + s * dv, -s * du + c * dv
    return (du / np.float32(au)) ** 2 + (dv / np.float32(av)) ** 2 <= 1.0


def _segment_distance(
    u: FloatArray, v: FloatArray, p0: tuple[float, float], p1: tuple[float, float]
) -> FloatArray:
    """Distance (mm) from every pixel to the segment p0-p1 (mm, head frame)."""
    du, dv = p1[0] - p0[0], p1[1] - p0[1]
    length2 = du * du + dv * dv
    t = np.clip(((u - p0[0]) * du + (v - p0[1]) * dv) / np.float32(length2), 0.0, 1.0)
    return np.hypot(u - (p0[0] + t * du), v - (p0[1] + t * dv))


# Bleeds -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Span:
    """Levels a bleed covers: a size profile that is 1 at ``center_mm`` and ``SPAN_FLOOR`` at the ends."""

    center_mm: float
    half_mm: float

    def profile(self, z: float) -> float:
        """Size factor of the bleed at level ``z`` (0 outside the span)."""
        t = abs(z - self.center_mm) / self.half_mm
        if t >= 1.0:
            return 0.0
        return max(SPAN_FLOOR, 1.0 - t * t)


@dataclass(frozen=True)
class _ExtraAxial:
    """Epidural lens or subdural crescent at the inner table around angle ``theta0``."""

    subtype: str
    span: _Span
    theta0: float
    half_arc: float  # rad
    thick_mm: float
    exponent: float  # 2: lens (biconvex); 4: flat crescent with tapering tips

    def thickness(self, theta: FloatArray, z: float) -> FloatArray:
        """Bleed thickness (mm) along the inner table per pixel angle at level ``z``."""
        p = self.span.profile(z)
        if p == 0.0:
            return np.zeros_like(theta)
        dtheta = np.angle(np.exp(1j * (theta - self.theta0))).astype(np.float32)
        arc = self.half_arc * math.sqrt(p)
        t = np.abs(dtheta) / np.float32(arc)
        shape = np.clip(1.0 - t**self.exponent, 0.0, None)
        if self.exponent > 2:
            shape = np.sqrt(shape)
        return (np.float32(self.thick_mm * p) * shape).astype(np.float32)


@dataclass(frozen=True)
class _Parenchymal:
    """Intraparenchymal blob with edema halo, centred at (u, v) in the head frame."""

    span: _Span
    center_uv: tuple[float, float]
    radius_mm: float
    edema_mm: float
    harmonics: tuple[tuple[float, float], ...]  # (amplitude, phase) for orders 2, 3, ...


@dataclass(frozen=True)
class _Ventricular:
    """Blood below a fluid level at image row coordinate ``level_y_mm`` in the ventricles."""

    span: _Span
    level_y_mm: float


@dataclass(frozen=True)
class _Subarachnoid:
    """Blood in the CSF spaces within a ball (head frame + z)."""

    span: _Span
    center_uv: tuple[float, float]
    center_z_mm: float
    radius_mm: float


@dataclass(frozen=True)
class _Bleeds:
    """Every bleed of a study and its blood value per subtype."""

    extra_axial: tuple[_ExtraAxial, ...] = ()
    parenchymal: _Parenchymal | None = None
    ventricular: _Ventricular | None = None
    subarachnoid: _Subarachnoid | None = None
    blood_hu: Mapping[str, float] = field(default_factory=dict)


# Rendering --------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class _Geometry:
    """Per-slice layering of one head at one level (all (H, W))."""

    depth_mm: FloatArray  # radial depth below the scalp surface (negative: outside)
    inner_radius_mm: FloatArray  # radius of the inner table per pixel angle
    brain_depth_mm: FloatArray  # depth below the inner table
    scalp_mm: FloatArray
    skull_mm: FloatArray


def _layers(head: _Head, outer: FloatArray, scalp: FloatArray, skull: FloatArray) -> _Geometry:
    """The geometry of a slice from its outer scalp radius and its scalp and skull thickness."""
    depth = outer - head.rho_mm
    return _Geometry(
        depth_mm=depth,
        inner_radius_mm=outer - scalp - skull,
        brain_depth_mm=depth - scalp - skull,
        scalp_mm=scalp,
        skull_mm=skull,
    )


def _dome_scale(z: float, top_mm: float) -> float:
    """Radius scale at level ``z`` of a dome (quarter ellipse from ``Z_WIDEST_MM``) ending at
    ``top_mm``: 1 at the widest level, 0 at and above the top."""
    t = (z - Z_WIDEST_MM) / max(top_mm - Z_WIDEST_MM, 1e-3)
    return math.sqrt(max(1.0 - t * t, 0.0))


def _vertex_geometry(head: _Head, z: float) -> _Geometry:
    """Layering above ``Z_HIGHEST_MM``: scalp, outer table and inner table are three nested
    domes, so a slice through the top of the head cuts the skull tangentially and shows a wide
    plate of bone around a small brain (or bone and scalp only, near the top)."""
    scalp0 = np.float32(head.scalp_mm)
    skull0 = np.float32(head.skull_mm) * head.skull_shape
    outer = head.outline_mm * np.float32(_dome_scale(z, Z_VERTEX_MM))
    bone_outer = (head.outline_mm - scalp0) * np.float32(
        _dome_scale(z, Z_VERTEX_MM - head.scalp_mm)
    )
    inner = (head.outline_mm - scalp0 - skull0) * np.float32(
        _dome_scale(z, Z_VERTEX_MM - head.scalp_mm - head.skull_mm)
    )
    scalp = np.maximum(outer - bone_outer, np.float32(0.5))
    skull = np.maximum(bone_outer - inner, np.float32(0.0))
    return _layers(head, outer, scalp, skull)


def _geometry(head: _Head, z: float) -> _Geometry:
    """Scalp, skull and brain depths of every pixel at level ``z``."""
    if z > Z_HIGHEST_MM:
        return _vertex_geometry(head, z)
    scale = np.float32(_scale_at(z))
    outer = head.outline_mm * scale
    temporalis = (
        np.float32(TEMPORALIS_MM * _bell(z, (Z_LOWEST_MM - 20, 75.0))) * np.cos(head.theta) ** 6
    )
    scalp = np.float32(head.scalp_mm) + temporalis
    # The skull is cut obliquely near the vertex and looks thicker there.
    oblique = np.float32(1.0 / math.sqrt(max(float(scale), 0.35)))
    skull = np.float32(head.skull_mm) * head.skull_shape * oblique
    return _layers(head, outer, scalp, skull)


def _ventricles(head: _Head, z: float, shift_u: FloatArray) -> BoolArray:
    """Lateral and third ventricles at level ``z`` (head frame shifted by ``shift_u``)."""
    scale = _scale_at(z)
    bl, bap = head.semi_lateral_mm * scale * 0.85, head.semi_ap_mm * scale * 0.85
    u = head.u_mm - shift_u
    v = head.v_mm
    out = np.zeros(u.shape, dtype=bool)
    presence = _bell(z, VENTRICLE_Z_MM)
    if presence > 0.08:
        half_len = 0.42 * bap * (0.55 + 0.45 * presence)
        center_v = -0.06 * bap
        vv = (v - np.float32(center_v)) / np.float32(half_len)
        half_w = _lerp(head.atrophy, *VENTRICLE_HALF_WIDTH_MM) * math.sqrt(presence)
        # Frontal horns point anterolaterally, bodies run beside the septum, atria diverge.
        front = np.clip(-vv - 0.45, 0.0, None)
        back = np.clip(vv, 0.0, None)
        lateral = (
            SEPTUM_HALF_MM
            + half_w * (0.8 + 1.6 * front**2 + 1.4 * back**2)
            + np.float32(0.05 * bl) * back
        )
        width = np.float32(half_w) * np.sqrt(np.clip(1.0 - vv**2, 0.0, None))
        width = width * (0.75 + 0.6 * front + 0.6 * back)
        au = np.abs(u)
        body = (np.abs(vv) < 1.0) & (np.abs(au - lateral) < width) & (au > SEPTUM_HALF_MM)
        if z < VENTRICLE_SPLIT_Z_MM:
            gap = 0.75 * (VENTRICLE_SPLIT_Z_MM - z) / (VENTRICLE_SPLIT_Z_MM - VENTRICLE_Z_MM[0])
            body &= (vv < -1.0 + 2.0 * (0.5 - gap / 2)) | (vv > 1.0 - 2.0 * (0.5 - gap / 2))
        out |= body
    third = _bell(z, THIRD_VENTRICLE_Z_MM)
    if third > 0.1:
        half = max(1.0 + 1.5 * head.atrophy, MIN_FEATURE_PX * head.spacing_mm / 2)
        out |= (np.abs(u) < half) & (np.abs(v - 0.05 * bap) < 0.13 * bap * third)
    return out


def _skull_base(
    head: _Head,
    z: float,
    hu: FloatArray,
    brain: BoolArray,
    head_mask: BoolArray,
    rng: np.random.Generator,
) -> tuple[BoolArray, BoolArray]:
    """Draw the skull-base structures of level ``z`` into ``hu`` (in place).

    Below the floor of the anterior fossa the front of the head is face (globes, orbital fat,
    ethmoid air cells in bony walls); the sphenoid wings, sinus, dorsum and clivus and the petrous
    ridges cross the cranial cavity, with mastoid air cells behind; the fourth ventricle sits in
    the posterior fossa. Just above the floor, the orbital roofs cut obliquely give mottled
    partial-volume bone over the frontal lobes. Every bony structure has a rim of partial volume
    whose HU fall in the range of acute blood: the look-alike that real skull-base slices carry.

    Args:
        head: The study.
        z: Level in mm.
        hu: Slice HU, modified in place.
        brain: Pixels inside the inner table.
        head_mask: Pixels inside the scalp's outer surface.
        rng: Source of the mottle.

    Returns:
        (pixels no longer brain tissue, pixels of bone) as bool (H, W).
    """
    shape = hu.shape
    no = np.zeros(shape, dtype=bool)
    if z >= SKULL_BASE_TOP_MM:
        return no, no
    u, v = head.u_mm, head.v_mm
    scale = _scale_at(z)
    bl, bap = head.semi_lateral_mm * scale * 0.85, head.semi_ap_mm * scale * 0.85
    fov_mm = head.size * head.spacing_mm
    mottle = _smooth_field(rng, head.size, fov_mm, DIPLOE_GRAIN_MM * 2)
    bone_fraction = np.zeros(shape, dtype=np.float32)  # 0 no bone .. 1 solid bone
    air = np.zeros(shape, dtype=bool)
    soft: list[tuple[BoolArray, float]] = []  # (region, HU) of non-bone face tissue

    roof = _bell(z, ORBITAL_ROOF_Z_MM)
    if roof > 0.05:
        # Mottled islands over the front of the fossa that shrink as the level rises.
        edge = -0.5 * bap + 8.0 * mottle
        region = brain & (v < edge) & (np.abs(u) < 0.7 * bl)
        amount = np.clip(1.2 * roof + 0.5 * mottle - 0.5, 0.0, 1.0) * ORBITAL_ROOF_BONE_FRACTION
        bone_fraction[region] = np.maximum(bone_fraction[region], amount[region])
    face = _bell(z, FACE_Z_MM) > 0.05
    if face:
        front = head_mask & (v < -FACE_FRONT * bap)
        soft.append((front, HU_ORBIT_FAT))
        radius = _uniform(rng, GLOBE_RADIUS_MM)
        for side in (-1.0, 1.0):
            cu, cv = side * 0.45 * bl, -0.82 * bap
            wall = _ellipse(u, v, cu, cv + 6.0, radius + 9.0, radius + 14.0) & front
            globe = _ellipse(u, v, cu, cv, radius, radius)
            ring = wall & ~_ellipse(u, v, cu, cv + 6.0, radius + 7.0, radius + 12.0)
            bone_fraction[ring] = 1.0
            soft.append((globe & front, HU_GLOBE))
        ethmoid = front & (np.abs(u) < 0.18 * bl)
        cells = (np.abs(np.sin(np.pi * u / ETHMOID_CELL_MM)) > 0.25) & (
            np.abs(np.sin(np.pi * v / ETHMOID_CELL_MM)) > 0.25
        )
        air |= ethmoid & cells
        bone_fraction[ethmoid & ~cells] = 1.0
    sphenoid = _bell(z, SPHENOID_Z_MM)
    if sphenoid > 0.05:
        for side in (-1.0, 1.0):
            wing = _segment_distance(
                u, v, (side * 0.12 * bl, -0.42 * bap), (side * 0.8 * bl, -0.2 * bap)
            ) < np.float32(1.5 + 1.5 * sphenoid)
            bone_fraction[wing & brain] = 1.0
        if z < 0.0:
            sinus = _ellipse(u, v, 0.0, -0.28 * bap, 0.16 * bl, 0.13 * bap)
            shell = _ellipse(u, v, 0.0, -0.28 * bap, 0.16 * bl + 2.5, 0.13 * bap + 2.5)
            bone_fraction[shell & ~sinus] = 1.0
            air |= sinus
        clivus = _ellipse(u, v, 0.0, 0.0, 6.0 * sphenoid + 2.0, 9.0 * sphenoid + 2.0)
        bone_fraction[clivus] = np.maximum(bone_fraction[clivus], 0.9)
    petrous = _bell(z, PETROUS_Z_MM)
    if petrous > 0.05:
        half = _lerp(petrous, *PETROUS_HALF_WIDTH_MM)
        for side in (-1.0, 1.0):
            near = _segment_distance(
                u, v, (side * 0.15 * bl, 0.12 * bap), (side * 0.7 * bl, 0.38 * bap)
            ) < np.float32(half) * (1.0 + 0.25 * mottle)
            bone_fraction[near] = 1.0
            if _bell(z, MASTOID_Z_MM) > 0.05:
                mastoid = _ellipse(
                    u, v, side * 0.8 * bl, 0.55 * bap, MASTOID_RADIUS_MM, MASTOID_RADIUS_MM
                )
                cells = mottle > 0.3
                air |= mastoid & cells
                bone_fraction[mastoid & ~cells] = 1.0
    # Partial volume: a blurred rim around solid bone (the slice is 5 mm thick).
    solid = bone_fraction >= 1.0
    sigma_px = PARTIAL_VOLUME_MM / head.spacing_mm
    rim = cv2.GaussianBlur(solid.astype(np.float32), (0, 0), sigma_px) * np.float32(0.5)
    bone_fraction = np.maximum(bone_fraction, np.where(solid, 1.0, rim).astype(np.float32))
    bone_fraction[bone_fraction < 0.02] = 0.0
    bone_fraction[~head_mask] = 0.0
    for region, value in soft:
        hu[region] = value
    touched = bone_fraction > 0
    bone_hu = head.hu_cortical + HU_DIPLOE_MOTTLE * mottle
    hu[touched] = (1.0 - bone_fraction[touched]) * hu[touched] + bone_fraction[touched] * bone_hu[
        touched
    ]
    air &= head_mask & ~solid
    hu[air] = HU_SINUS_AIR
    fourth = _bell(z, FOURTH_VENTRICLE_Z_MM)
    if fourth > 0.05:
        ventricle = _ellipse(u, v, 0.0, 0.38 * bap, 5.0 * fourth + 1.5, 3.5 * fourth + 1.0)
        hu[ventricle & brain & ~touched] = head.hu_csf
    replaced = air | touched
    for region, _ in soft:
        replaced |= region
    return replaced, solid | (bone_fraction > 0.5)


def _render(
    head: _Head, z: float, bleeds: _Bleeds, rng: np.random.Generator, skull_base: bool = False
) -> PhantomSlice:
    """Render one slice of ``head`` at level ``z`` with the bleeds active there (and the
    skull-base structures of that level when ``skull_base``)."""
    geo = _geometry(head, z)
    u, v, theta = head.u_mm, head.v_mm, head.theta
    shape = u.shape
    spacing = head.spacing_mm
    min_half = np.float32(MIN_FEATURE_PX * spacing / 2)
    scale = _scale_at(z)
    bl, bap = head.semi_lateral_mm * scale * 0.85, head.semi_ap_mm * scale * 0.85
    c_mix, s_mix = _phase(z)

    # Extra-axial bleeds push the brain surface inward (epidural outermost).
    extra = np.zeros(shape, dtype=np.float32)
    extra_masks: dict[str, BoolArray] = {}
    for bleed in bleeds.extra_axial:
        thick = bleed.thickness(theta, z)
        if not thick.any():
            continue
        inside = (geo.brain_depth_mm >= extra) & (geo.brain_depth_mm < extra + thick)
        extra_masks[bleed.subtype] = extra_masks.get(bleed.subtype, np.zeros(shape, bool)) | inside
        extra = extra + thick
    db = geo.brain_depth_mm - extra  # depth below the (possibly displaced) brain surface
    # Midline shift away from the largest extra-axial bleed, greatest mid-brain.
    shift = np.zeros(shape, dtype=np.float32)
    if extra.any():
        peak = float(extra.max())
        side = -float(np.sign(np.mean(u[extra > 0.5 * peak])))
        shift = np.float32(0.45 * peak * side) * np.clip(
            1.0 - (v / np.float32(bap)) ** 2, 0.0, None
        )

    # Layers: air, scalp (skin, fat, galea), skull (tables and diploe), brain.
    hu = np.full(shape, HU_AIR, dtype=np.float32)
    head_mask = geo.depth_mm >= 0
    hu[head_mask] = HU_SOFT_TISSUE
    fat = (geo.depth_mm > 0.3 * geo.scalp_mm) & (geo.depth_mm < 0.55 * geo.scalp_mm)
    hu[fat & (np.cos(theta) ** 6 < 0.3)] = HU_FAT
    bone_depth = geo.depth_mm - geo.scalp_mm
    bone = (bone_depth >= 0) & (geo.brain_depth_mm < 0)
    rel = bone_depth / np.maximum(geo.skull_mm, np.float32(1e-3))
    diploe = (
        bone & (rel > TABLE_FRACTION) & (rel < 1 - TABLE_FRACTION) & (geo.skull_mm > MIN_DIPLOE_MM)
    )
    hu[bone] = head.hu_cortical
    mottle = _smooth_field(rng, head.size, head.size * spacing, DIPLOE_GRAIN_MM)
    hu[diploe] = head.hu_diploe + HU_DIPLOE_MOTTLE * mottle[diploe]
    brain = geo.brain_depth_mm >= 0

    # Cortex and sulci: sulci are radial lines meandering with a slow field.
    wiggle = c_mix * head.wiggle[0] + s_mix * head.wiggle[1]
    f = theta * np.float32(head.sulcus_count / (2 * np.pi)) + np.float32(SULCUS_WIGGLE) * wiggle
    k = np.round(f)
    dist_line = (
        np.abs(f - k) * np.float32(2 * np.pi / head.sulcus_count) * np.maximum(head.rho_mm, 1.0)
    )
    sulcus_depth = head.sulcus_depths_mm[k.astype(np.int64) % head.sulcus_count].astype(np.float32)
    sulcus_depth = np.maximum(
        np.minimum(sulcus_depth, np.float32(SULCUS_MAX_DEPTH_FRACTION) * geo.inner_radius_mm),
        np.float32(1e-3),  # no brain left at the very top of the head
    )
    sah_region = _sah_region(bleeds.subarachnoid, head, z)
    widen = np.where(sah_region, np.float32(SAH_WIDEN), np.float32(1.0))
    half_w = np.float32(_lerp(head.atrophy, *SULCUS_WIDTH_MM) / 2) * widen
    half_w = np.maximum(half_w * (1.0 - 0.6 * np.clip(db / sulcus_depth, 0.0, 1.0)), min_half)
    half_w = np.where(
        sah_region, np.maximum(half_w, np.float32(MIN_BLOOD_LINE_PX * spacing / 2)), half_w
    )
    surface_csf = np.float32(max(_lerp(head.atrophy, *SURFACE_CSF_MM), 2 * float(min_half)))
    sulci = (dist_line < half_w) & (db < sulcus_depth) & (db >= 0)
    cortex = (db < surface_csf + CORTEX_MM) | (
        (dist_line < half_w + CORTEX_MM) & (db < sulcus_depth + CORTEX_MM)
    )
    tissue_texture = np.float32(HU_TISSUE_TEXTURE) * (
        c_mix * head.texture[0] + s_mix * head.texture[1]
    )
    hu[brain] = head.hu_white + tissue_texture[brain]
    grey = brain & cortex
    hu[grey] = head.hu_grey + tissue_texture[grey]

    # Deep grey nuclei (caudate heads, lentiform nuclei, thalami).
    us = u - shift
    deep = _bell(z, DEEP_GREY_Z_MM)
    if deep > 0.1:
        nuclei = np.zeros(shape, dtype=bool)
        for side in (-1.0, 1.0):
            nuclei |= _ellipse(
                us, v, side * 0.13 * bl, 0.10 * bap, 0.11 * bl * deep, 0.12 * bap * deep
            )
            nuclei |= _ellipse(
                us,
                v,
                side * 0.30 * bl,
                -0.02 * bap,
                0.07 * bl * deep,
                0.16 * bap * deep,
                side * 0.3,
            )
            nuclei |= _ellipse(
                us, v, side * 0.12 * bl, -0.27 * bap, 0.07 * bl * deep, 0.08 * bap * deep
            )
        nuclei &= brain & (db > CORTEX_MM * 3)
        hu[nuclei] = head.hu_grey + HU_DEEP_GREY_OFFSET + tissue_texture[nuclei]

    # CSF spaces: surface, sulci, interhemispheric fissure, Sylvian fissures, cisterns, ventricles.
    csf = brain & ((db < surface_csf) | sulci) & (db >= 0)
    presence = max(_bell(z, VENTRICLE_Z_MM), _bell(z, CISTERN_Z_MM))
    fissure_half = np.float32(max(_lerp(head.atrophy, *FISSURE_MM), float(min_half)))
    midline = np.abs(us) < fissure_half
    central = np.abs(v) < np.float32(0.55 * bap * presence)
    fissure = brain & midline & ~central & (db >= 0)
    csf |= fissure
    sylvian_p = _bell(z, SYLVIAN_Z_MM)
    if sylvian_p > 0.1:
        for side in (-1.0, 1.0):
            start = (side * 0.42 * bl, 0.0)
            end = (side * 1.1 * bl, -0.18 * bap)
            near = _segment_distance(us, v, start, end) < np.float32(
                max(1.5 * sylvian_p * (1 + head.atrophy), float(min_half))
            )
            csf |= near & brain & (db >= 0)
    cistern_p = _bell(z, CISTERN_Z_MM)
    if cistern_p > 0.1:
        mid_r = 0.14 * bl * (0.6 + 0.4 * cistern_p)
        mid_c = (0.0, 0.12 * bap)
        ring = max(2.0 + 2.0 * head.atrophy, 2 * float(min_half))
        r_mid = np.hypot(us - mid_c[0], v - np.float32(mid_c[1]))
        ambient = (r_mid >= mid_r) & (r_mid < mid_r + ring)
        phi = np.arctan2(v - np.float32(-0.1 * bap), us)
        r_supra = np.hypot(us, v - np.float32(-0.1 * bap))
        suprasellar = r_supra < np.float32(0.11 * bl * cistern_p) * (0.75 + 0.25 * np.cos(5 * phi))
        csf |= brain & (ambient | suprasellar)
        midbrain = r_mid < mid_r
        hu[midbrain & brain] = head.hu_grey - 4.0 + tissue_texture[midbrain & brain]
    else:
        midbrain = ambient = np.zeros(shape, dtype=bool)
    ventricles = _ventricles(head, z, shift) & brain & (db > 2 * CORTEX_MM) & ~midbrain & ~ambient
    csf |= ventricles
    hu[csf] = head.hu_csf
    falx_cover = np.clip(
        (np.float32(FALX_HALF_MM + spacing / 2) - np.abs(us)) / np.float32(spacing), 0.0, 1.0
    )
    falx = fissure & (falx_cover > 0)
    hu[falx] = hu[falx] + (HU_FALX - hu[falx]) * falx_cover[falx]
    if skull_base:
        replaced, base_bone = _skull_base(head, z, hu, brain, head_mask, rng)
        bone = bone | base_bone
        brain, csf, ventricles = brain & ~replaced, csf & ~replaced, ventricles & ~replaced

    # Bleeds.
    masks = {name: np.zeros(shape, dtype=bool) for name in SUBTYPES}
    for name, m in extra_masks.items():
        masks[name] = m & brain
    parenchyma = brain & ~csf & (db >= surface_csf)
    if bleeds.parenchymal is not None:
        blob, halo = _parenchymal(bleeds.parenchymal, head, z)
        masks["intraparenchymal"] = blob & parenchyma
        edema = halo & parenchyma & ~blob
        hu[edema] = _uniform(rng, HU_EDEMA) + tissue_texture[edema]
    if bleeds.ventricular is not None and bleeds.ventricular.span.profile(z) > 0:
        below = head.y_mm > np.float32(bleeds.ventricular.level_y_mm)
        masks["intraventricular"] = ventricles & below
    if sah_region.any():
        masks["subarachnoid"] = sah_region & csf & ~ventricles
    min_px = max(MIN_MASK_PX, MIN_MASK_MM2 / spacing**2)
    for name in SUBTYPES:
        masks[name] &= head.fov
        m = masks[name]
        if 0 < m.sum() < min_px:
            m[:] = False  # a sliver at the edge of a bleed's span: no label for a few pixels
        if m.any():
            blood = bleeds.blood_hu[name] + HU_BLOOD_TEXTURE * (
                c_mix * head.texture[1] - s_mix * head.texture[0]
            )
            hu[m] = blood[m]

    # Imaging: point-spread blur, correlated noise, scan field, integer HU.
    image = cv2.GaussianBlur(hu, (0, 0), PSF_SIGMA_PX)
    image = image + _correlated_noise(rng, shape, head.noise_sd)
    image = np.clip(np.rint(image), HU_MIN_STORED, HU_CEIL)
    image[~head.fov] = HU_AIR
    image = image.astype(np.float32, copy=False)
    image.setflags(write=False)
    for m in masks.values():
        m.setflags(write=False)
    anatomy = {"bone": bone, "brain": brain, "ventricles": ventricles, "csf": csf, "fov": head.fov}
    for m in anatomy.values():
        m.setflags(write=False)
    return PhantomSlice(hu=image, masks=masks, z_mm=z, pixel_spacing_mm=spacing, anatomy=anatomy)


def _correlated_noise(rng: np.random.Generator, shape: tuple[int, ...], sd_hu: float) -> FloatArray:
    """Gaussian noise of sd ``sd_hu``, blurred by ``NOISE_CORRELATION_SIGMA_PX`` then rescaled."""
    white = rng.standard_normal(shape, dtype=np.float32)
    kernel = _kernel1d(NOISE_CORRELATION_SIGMA_PX)
    blurred = cv2.sepFilter2D(white, -1, kernel, kernel, borderType=cv2.BORDER_REFLECT)
    gain = float(np.sum(kernel**2))  # sd after a separable blur of unit white noise
    return blurred * np.float32(sd_hu / gain)


def _kernel1d(sigma_px: float) -> npt.NDArray[np.float32]:
    """Normalised 1-D Gaussian kernel of ``sigma_px``, truncated at 4 sigma (odd length >= 3)."""
    radius = max(1, int(math.ceil(4 * sigma_px)))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma_px) ** 2)
    return (k / k.sum()).astype(np.float32)


def _sah_region(sah: _Subarachnoid | None, head: _Head, z: float) -> BoolArray:
    """Pixels of the ball holding subarachnoid blood at level ``z`` (all False when none)."""
    if sah is None:
        return np.zeros(head.u_mm.shape, dtype=bool)
    p = sah.span.profile(z)
    if p == 0.0:
        return np.zeros(head.u_mm.shape, dtype=bool)
    radius = np.float32(sah.radius_mm * math.sqrt(p))
    return (
        np.hypot(head.u_mm - np.float32(sah.center_uv[0]), head.v_mm - np.float32(sah.center_uv[1]))
        < radius
    )


def _parenchymal(iph: _Parenchymal, head: _Head, z: float) -> tuple[BoolArray, BoolArray]:
    """(blob, blob plus edema halo) of an intraparenchymal bleed at level ``z``."""
    p = iph.span.profile(z)
    if p == 0.0:
        empty = np.zeros(head.u_mm.shape, dtype=bool)
        return empty, empty
    du = head.u_mm - np.float32(iph.center_uv[0])
    dv = head.v_mm - np.float32(iph.center_uv[1])
    dist = np.hypot(du, dv)
    phi = np.arctan2(dv, du)
    boundary = np.ones_like(phi)
    for order, (amp, phase) in enumerate(iph.harmonics, start=2):
        boundary += np.float32(amp) * np.cos(order * phi + np.float32(phase))
    radius = np.float32(iph.radius_mm * math.sqrt(p)) * boundary
    blob = dist < radius
    halo = dist < radius + np.float32(iph.edema_mm)
    return blob, halo


# Planning a study -------------------------------------------------------------------------------
def _inner_radius_mm(head: _Head, theta: float, z: float) -> float:
    """Approximate inner-table radius (mm) at head-frame angle ``theta`` and level ``z``."""
    a, b = head.semi_lateral_mm, head.semi_ap_mm
    widest = a * b / math.hypot(b * math.cos(theta), a * math.sin(theta))
    if z > Z_HIGHEST_MM:
        top = Z_VERTEX_MM - head.scalp_mm - head.skull_mm
        inner = (widest - head.scalp_mm - head.skull_mm) * _dome_scale(z, top)
        return max(inner, 2.0)
    return widest * _scale_at(z) - head.scalp_mm - head.skull_mm


def _levels(
    rng: np.random.Generator,
    n_slices: int,
    need_ventricles: bool,
    skull_base: bool = False,
    vertex: bool = False,
) -> list[float]:
    """Slice levels (mm): contiguous, ``SLICE_THICKNESS_MM`` apart (closer when many slices).
    A ``skull_base`` study starts below the anterior fossa floor, a ``vertex`` one ends at the
    top of the head (``VERTEX_TOP_MM``), unless the study needs ventricles."""
    step = min(SLICE_THICKNESS_MM, (Z_HIGHEST_MM - Z_LOWEST_MM) / max(n_slices - 1, 1))
    lo, hi = Z_LOWEST_MM, Z_HIGHEST_MM - (n_slices - 1) * step
    if skull_base and not need_ventricles:
        lo, hi = Z_SKULL_BASE_LOWEST_MM, min(Z_SKULL_BASE_START_MM, hi)
    elif vertex and not need_ventricles:
        lo, hi = (top - (n_slices - 1) * step for top in VERTEX_TOP_MM)
    if need_ventricles:
        # Make sure some slice crosses the bodies of the lateral ventricles.
        lo = max(lo, 36.0 - (n_slices - 1) * step)
        hi = min(hi, 58.0)
    z0 = float(rng.uniform(lo, max(lo, hi)))
    return [round(z0 + k * step, 2) for k in range(n_slices)]


def _pick_span(
    rng: np.random.Generator, levels: Sequence[float], eligible: Sequence[bool]
) -> _Span | None:
    """A run of contiguous eligible slices (1 to MAX_SPAN_SLICES) as a span of levels."""
    candidates = [k for k, ok in enumerate(eligible) if ok]
    if not candidates:
        return None
    center = int(rng.choice(candidates))
    length = int(rng.integers(1, min(MAX_SPAN_SLICES, len(levels)) + 1))
    first = center - int(rng.integers(0, length))
    run = [k for k in range(first, first + length) if 0 <= k < len(levels) and eligible[k]]
    # Keep the part of the run contiguous with the centre slice.
    lo = hi = center
    while lo - 1 in run:
        lo -= 1
    while hi + 1 in run:
        hi += 1
    step = levels[1] - levels[0] if len(levels) > 1 else SLICE_THICKNESS_MM
    center_mm = (levels[lo] + levels[hi]) / 2.0
    return _Span(center_mm=center_mm, half_mm=(hi - lo + 1) / 2.0 * step)


def _plan_bleeds(
    rng: np.random.Generator, head: _Head, levels: Sequence[float], subtypes: Sequence[str]
) -> _Bleeds:
    """Place each requested subtype as a 3-D bleed over a run of contiguous slices."""
    n = len(levels)
    every = [True] * n
    extra: list[_ExtraAxial] = []
    parenchymal = ventricular = subarachnoid = None
    blood = {name: _uniform(rng, HU_BLOOD) for name in SUBTYPES}
    min_thick = MIN_BLEED_PX * head.spacing_mm
    for name in SUBTYPES:
        if name not in subtypes:
            continue
        if name in ("epidural", "subdural"):
            span = _pick_span(rng, levels, every)
            side = 0.0 if rng.random() < 0.5 else math.pi
            epidural = name == "epidural"
            theta0 = side + float(rng.normal(0.0, 0.45 if epidural else 0.35))
            radius = _inner_radius_mm(head, theta0, span.center_mm)
            arc = _uniform(rng, EPIDURAL_ARC_MM if epidural else SUBDURAL_ARC_MM)
            thick = max(
                _uniform(rng, EPIDURAL_THICK_MM if epidural else SUBDURAL_THICK_MM), min_thick
            )
            extra.append(
                _ExtraAxial(
                    subtype=name,
                    span=span,
                    theta0=theta0,
                    half_arc=arc / (2.0 * radius),
                    thick_mm=thick,
                    exponent=2.0 if epidural else 4.0,
                )
            )
        elif name == "intraparenchymal":
            span = _pick_span(rng, levels, every)
            theta = float(rng.uniform(-math.pi, math.pi))
            brain_r = _inner_radius_mm(head, theta, span.center_mm)
            r0 = min(_uniform(rng, IPH_RADIUS_MM), 0.3 * brain_r)
            rho = _uniform(rng, IPH_DEPTH_FRACTION) * brain_r
            harmonics = tuple(
                (float(rng.normal(0.0, 0.18 / order)), float(rng.uniform(0, 2 * math.pi)))
                for order in range(2, 7)
            )
            parenchymal = _Parenchymal(
                span=span,
                center_uv=(rho * math.cos(theta), rho * math.sin(theta)),
                radius_mm=max(r0, 2 * min_thick),
                edema_mm=max(_uniform(rng, IPH_EDEMA_MM), min_thick),
                harmonics=harmonics,
            )
        elif name == "intraventricular":
            zero = np.zeros(head.u_mm.shape, dtype=np.float32)
            masks = [
                _ventricles(head, z, zero) & (_geometry(head, z).brain_depth_mm > 4 * CORTEX_MM)
                for z in levels
            ]
            eligible = [float(m.sum()) * head.spacing_mm**2 >= MIN_VENTRICLE_MM2 for m in masks]
            span = _pick_span(rng, levels, eligible)
            if span is None:
                log.warning("no slice crosses the ventricles: intraventricular bleed dropped")
                continue
            central = min(
                range(n),
                key=lambda k: abs(levels[k] - span.center_mm) + (0 if eligible[k] else 1e6),
            )
            rows = head.y_mm[masks[central]]
            level = float(np.quantile(rows, _uniform(rng, IVH_LEVEL_QUANTILE)))
            ventricular = _Ventricular(span=span, level_y_mm=level)
        elif name == "subarachnoid":
            basal_ok = [z < SYLVIAN_Z_MM[1] - 4.0 for z in levels]
            if any(basal_ok) and rng.random() < 0.5:
                span = _pick_span(rng, levels, basal_ok)
                scale = _scale_at(span.center_mm)
                subarachnoid = _Subarachnoid(
                    span=span,
                    center_uv=(0.0, -0.05 * head.semi_ap_mm * scale),
                    center_z_mm=span.center_mm,
                    radius_mm=SAH_BASAL_RADIUS_MM * scale,
                )
            else:
                span = _pick_span(rng, levels, every)
                theta = float(rng.uniform(-math.pi, math.pi))
                rho = 0.95 * _inner_radius_mm(head, theta, span.center_mm)
                subarachnoid = _Subarachnoid(
                    span=span,
                    center_uv=(rho * math.cos(theta), rho * math.sin(theta)),
                    center_z_mm=span.center_mm,
                    radius_mm=_uniform(rng, SAH_RADIUS_MM),
                )
    return _Bleeds(
        extra_axial=tuple(extra),
        parenchymal=parenchymal,
        ventricular=ventricular,
        subarachnoid=subarachnoid,
        blood_hu=blood,
    )


def make_study(
    rng: np.random.Generator,
    n_slices: int = DEFAULT_SLICES,
    subtypes: Sequence[str] = (),
    size: int = DEFAULT_SIZE_PX,
    skull_base: bool = False,
    vertex: bool = False,
) -> list[PhantomSlice]:
    """Render one synthetic head: ``n_slices`` contiguous axial slices, inferior to superior.

    Args:
        rng: Source of every random choice; the same generator state gives the same study.
        n_slices: Number of slices (>= 1), ``SLICE_THICKNESS_MM`` apart (closer if they would
            not fit between the skull base and the vertex).
        subtypes: RSNA subtypes to draw (any of ``SUBTYPES``); empty for a healthy head. Each
            spans a run of 1 to ``MAX_SPAN_SLICES`` contiguous slices; the other slices are
            healthy.
        size: Side of the square slices in pixels (>= 64). The field of view stays ~215-250 mm,
            so the pixel spacing grows as the size shrinks.
        skull_base: Start the slices at the skull base (``Z_SKULL_BASE_LOWEST_MM`` to
            ``Z_SKULL_BASE_START_MM``) and draw its structures: orbits, ethmoid and sphenoid
            sinuses, sphenoid wings, petrous ridges, mastoid cells and the partial-volume bone
            that looks like blood. A study with an intraventricular bleed keeps its usual levels.
            ``False`` gives exactly the study of earlier versions.
        vertex: End the slices at the top of the head (``VERTEX_TOP_MM``): the highest slices
            cut the skull tangentially and show a wide plate of bone (or bone and scalp only).
            Ignored with ``skull_base`` or an intraventricular bleed.

    Returns:
        ``n_slices`` :class:`PhantomSlice` ordered by ``z_mm`` ascending.

    Raises:
        ConfigError: unknown subtype, ``n_slices`` < 1 or ``size`` < 64.
    """
    unknown = sorted(set(subtypes) - set(SUBTYPES))
    if unknown:
        raise ConfigError(f"unknown subtype(s) {', '.join(unknown)}: use {', '.join(SUBTYPES)}")
    if n_slices < 1:
        raise ConfigError(f"a study needs at least 1 slice, got {n_slices}")
    if size < MIN_SIZE_PX:
        raise ConfigError(f"phantom size must be at least {MIN_SIZE_PX} px, got {size}")
    head = _make_head(rng, size)
    levels = _levels(rng, n_slices, "intraventricular" in subtypes, skull_base, vertex)
    bleeds = _plan_bleeds(rng, head, levels, subtypes)
    return [_render(head, z, bleeds, rng, skull_base) for z in levels]


# Writing ----------------------------------------------------------------------------------------
def _uid(seed: int, *parts: object) -> str:
    """A UID fixed by the seed and ``parts`` (pydicom's hash-based ``generate_uid``)."""
    return str(generate_uid(entropy_srcs=[UID_NAMESPACE, str(seed), *map(str, parts)]))


def _image_id(seed: int, study: int, index: int) -> str:
    """RSNA-style image id (``ID_`` + 9 hex digits) fixed by seed, study and slice."""
    digest = hashlib.sha256(f"{UID_NAMESPACE}:{seed}:{study}:{index}".encode()).hexdigest()
    return f"ID_{digest[:ID_HEX_DIGITS]}"


def patient_key(patient_id: str) -> str:
    """Pseudonym of a PatientID as the readers derive it (:func:`hemo.dicom.pseudonymize`)."""
    from hemo.dicom import pseudonymize

    return pseudonymize(patient_id)


def pseudonymize_uid(uid: str) -> str:
    """Pseudonym of an instance UID as the readers derive it (:func:`hemo.dicom.pseudonymize_uid`)."""
    from hemo.dicom import pseudonymize_uid as pseudonym

    return pseudonym(uid)


@dataclass(frozen=True)
class SliceIdentity:
    """Identifiers written into one slice's DICOM header (all synthetic).

    Attributes:
        image_id: RSNA-style image id, ``ID_`` + 9 hex digits (the file stem).
        patient_id: PatientID (0010,0020), e.g. ``PHANTOM-0001``.
        patient_name: PatientName (0010,0010), e.g. ``Phantom^0001``.
        study_uid: StudyInstanceUID (0020,000D).
        series_uid: SeriesInstanceUID (0020,000E).
        frame_uid: FrameOfReferenceUID (0020,0052).
        sop_uid: SOPInstanceUID (0008,0018).
        instance_number: InstanceNumber (0020,0013), 1-based.
    """

    image_id: str
    patient_id: str
    patient_name: str
    study_uid: str
    series_uid: str
    frame_uid: str
    sop_uid: str
    instance_number: int


def stored_pixels(slc: PhantomSlice) -> npt.NDArray[np.uint16]:
    """Stored values of a slice: ``HU - RescaleIntercept`` inside the scan field, padding outside.

    Args:
        slc: A phantom slice (integer HU >= ``HU_MIN_STORED`` inside its field of view).

    Returns:
        uint16 (H, W) as written to PixelData (7FE0,0010).
    """
    fov = slc.anatomy["fov"]
    values = np.where(fov, slc.hu - np.float32(RESCALE_INTERCEPT), np.float32(PADDING_STORED))
    return np.rint(values).astype(np.uint16)


def _dicom_dataset(slc: PhantomSlice, ident: SliceIdentity) -> Dataset:
    """A CT Image Storage dataset (PS3.3 A.3) holding ``slc``, with file meta for Part 10."""
    rows, cols = slc.hu.shape
    spacing = round(slc.pixel_spacing_mm, 6)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(CT_IMAGE_STORAGE)
    meta.MediaStorageSOPInstanceUID = UID(ident.sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    ds.SOPClassUID = UID(CT_IMAGE_STORAGE)
    ds.SOPInstanceUID = UID(ident.sop_uid)
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = STUDY_DATE
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = STUDY_TIME
    ds.AccessionNumber = ""
    ds.Modality = "CT"
    ds.Manufacturer = "hemo synthetic phantom"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "Synthetic head CT phantom"
    ds.SeriesDescription = "Axial 5 mm, synthetic"
    ds.PatientName = ident.patient_name
    ds.PatientID = ident.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.BodyPartExamined = "HEAD"
    ds.SliceThickness = f"{SLICE_THICKNESS_MM:g}"
    ds.KVP = "120"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = UID(ident.study_uid)
    ds.SeriesInstanceUID = UID(ident.series_uid)
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = ident.instance_number
    # Pixel centres: the first (top-left) pixel sits half the field left and up of the axis.
    origin = -(cols - 1) / 2.0 * spacing
    ds.ImagePositionPatient = [
        f"{origin:.4f}",
        f"{-(rows - 1) / 2.0 * spacing:.4f}",
        f"{slc.z_mm:.2f}",
    ]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.FrameOfReferenceUID = UID(ident.frame_uid)
    ds.PositionReferenceIndicator = ""
    ds.SliceLocation = f"{slc.z_mm:.2f}"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.PixelSpacing = [f"{spacing:.6f}", f"{spacing:.6f}"]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelPaddingValue = PADDING_STORED
    ds.WindowCenter = f"{WINDOW_CENTER_HU:g}"
    ds.WindowWidth = f"{WINDOW_WIDTH_HU:g}"
    ds.RescaleIntercept = f"{RESCALE_INTERCEPT:g}"
    ds.RescaleSlope = f"{RESCALE_SLOPE:g}"
    ds.RescaleType = "HU"
    ds.BurnedInAnnotation = "NO"
    ds.PixelData = stored_pixels(slc).astype("<u2").tobytes()
    return ds


def write_dicom(slc: PhantomSlice, path: Path, ident: SliceIdentity) -> None:
    """Write one phantom slice as a Part 10 CT DICOM file (PS3.10; explicit VR little endian).

    Args:
        slc: The slice; stored values from :func:`stored_pixels`.
        path: Output file (overwritten).
        ident: Identifiers written into the header.
    """
    _dicom_dataset(slc, ident).save_as(path, enforce_file_format=True)


def _subtype_plan(
    rng: np.random.Generator, n_studies: int, positive_fraction: float
) -> list[tuple[str, ...]]:
    """Subtypes of each study: ``round(n * positive_fraction)`` positive studies, every subtype
    used as a primary one in turn so that small datasets still hold all five."""
    n_pos = int(round(n_studies * positive_fraction))
    positive = set(rng.permutation(n_studies)[:n_pos].tolist())
    primaries = list(rng.permutation(len(SUBTYPES)))
    plan: list[tuple[str, ...]] = []
    used = 0
    for study in range(n_studies):
        if study not in positive:
            plan.append(())
            continue
        first = SUBTYPES[primaries[used % len(SUBTYPES)]]
        used += 1
        count = int(rng.choice(len(SUBTYPE_COUNT_P), p=SUBTYPE_COUNT_P)) + 1
        others = [s for s in SUBTYPES if s != first]
        extra = rng.choice(len(others), size=count - 1, replace=False)
        plan.append(tuple(sorted({first, *(others[i] for i in extra)}, key=SUBTYPES.index)))
    return plan


#: Share of studies with a bleed in a demo dataset.
DEFAULT_POSITIVE_FRACTION = 0.5


def check_dataset_args(
    n_studies: int,
    slices_per_study: int,
    size: int,
    positive_fraction: float,
    skull_base: float = 0.0,
    vertex: float = 0.0,
) -> None:
    """Raise ConfigError on arguments :func:`write_demo_dataset` cannot honour."""
    if n_studies < 1:
        raise ConfigError(f"--n must be at least 1 study, got {n_studies}")
    if slices_per_study < 1:
        raise ConfigError(f"--slices-per-study must be at least 1, got {slices_per_study}")
    if size < MIN_SIZE_PX:
        raise ConfigError(f"--size must be at least {MIN_SIZE_PX} px, got {size}")
    if not 0.0 <= positive_fraction <= 1.0:
        raise ConfigError(f"positive_fraction must be in [0, 1], got {positive_fraction}")
    if not 0.0 <= skull_base <= 1.0:
        raise ConfigError(f"--skull-base must be a fraction in [0, 1], got {skull_base}")
    if not 0.0 <= vertex <= 1.0 - skull_base:
        raise ConfigError(
            f"--vertex must be a fraction in [0, 1 - skull_base = {1.0 - skull_base:g}], got {vertex}"
        )


def _remove_stale(folder: Path, pattern: str, keep: set[str]) -> None:
    """Delete files of an earlier phantom run (``pattern`` in ``folder``) not written this time."""
    stale = sorted(p for p in folder.glob(pattern) if p.name not in keep)
    for path in stale:
        path.unlink()
    if stale:
        log.info("removed %d files of an earlier run from %s", len(stale), folder)


def write_demo_dataset(
    out: Path,
    n_studies: int,
    seed: int = 0,
    slices_per_study: int = DEFAULT_SLICES,
    size: int = DEFAULT_SIZE_PX,
    positive_fraction: float = DEFAULT_POSITIVE_FRACTION,
    progress: bool = False,
    skull_base: float = 0.0,
    vertex: float = 0.0,
) -> pd.DataFrame:
    """Write a phantom dataset in the RSNA-2019 layout, with masks and an index.

    Layout under ``out``: ``stage_2_train.csv`` (``ID,Label``; rows ``ID_<id>_<label>`` for the
    five subtypes then ``any``, as in RSNA-2019), ``stage_2_train/ID_<id>.dcm``,
    ``masks/ID_<id>.png`` (uint8 bitmask, bit ``i`` = ``SUBTYPES[i]``) and ``index.parquet``
    (index columns of docs/CONTRACTS.md plus ``mask_path``; paths relative to ``out``). Each study
    is one synthetic patient (PatientID ``PHANTOM-0001`` ...); ``patient_id`` in the index is its
    pseudonym (:func:`patient_key`) and ``study_uid``/``series_uid`` the UIDs' pseudonyms, as the
    DICOM readers derive them. Splits are by patient,
    stratified by positivity (:func:`hemo.datasets.split.assign_splits`). Files of an earlier run
    that this run does not write are removed from ``stage_2_train/`` and ``masks/``.

    Args:
        out: Output folder (created).
        n_studies: Number of studies (patients), >= 1.
        seed: Seed of everything; the same arguments give the same bytes in every file.
        slices_per_study: Slices per study, >= 1.
        size: Slice side in pixels, >= 64.
        positive_fraction: Fraction of studies with at least one bleed, in [0, 1].
        progress: Show a progress bar on stderr.
        skull_base: Fraction of studies, in [0, 1], whose slices start at the skull base
            (:func:`make_study`); each study is drawn from a stream of its own, so 0 writes the
            same bytes as earlier versions.
        vertex: Fraction of studies, in [0, 1 - skull_base], whose slices end at the top of the
            head (:func:`make_study`).

    Returns:
        The index as written (one row per slice, paths relative to ``out``).

    Raises:
        ConfigError: an argument is out of range.
    """
    from tqdm import tqdm

    from hemo.datasets.split import assign_splits

    check_dataset_args(n_studies, slices_per_study, size, positive_fraction, skull_base, vertex)
    out = Path(out)
    dicom_dir, mask_dir = out / DICOM_DIR, out / MASK_DIR
    dicom_dir.mkdir(parents=True, exist_ok=True)
    mask_dir.mkdir(parents=True, exist_ok=True)
    plan = _subtype_plan(
        np.random.default_rng(np.random.SeedSequence([seed])), n_studies, positive_fraction
    )
    rows: list[dict[str, object]] = []
    csv_lines = ["ID,Label"]
    ids: set[str] = set()
    bar = tqdm(
        total=n_studies * slices_per_study,
        desc="phantoms",
        unit="slice",
        disable=not progress,
        file=sys.stderr,
    )
    with bar:
        for study, subtypes in enumerate(plan):
            rng = np.random.default_rng(np.random.SeedSequence([seed, study + 1]))
            coverage = (
                np.random.default_rng(
                    np.random.SeedSequence([seed, study + 1, SKULL_BASE_STREAM])
                ).random()
                if skull_base + vertex > 0
                else 1.0
            )
            slices = make_study(
                rng,
                slices_per_study,
                subtypes,
                size,
                skull_base=coverage < skull_base,
                vertex=skull_base <= coverage < skull_base + vertex,
            )
            number = f"{study + 1:04d}"
            patient = f"PHANTOM-{number}"
            study_uid = _uid(seed, study, "study")
            series_uid = _uid(seed, study, "series")
            frame_uid = _uid(seed, study, "frame")
            for index, slc in enumerate(slices):
                ident = SliceIdentity(
                    image_id=_image_id(seed, study, index),
                    patient_id=patient,
                    patient_name=f"Phantom^{number}",
                    study_uid=study_uid,
                    series_uid=series_uid,
                    frame_uid=frame_uid,
                    sop_uid=_uid(seed, study, "sop", index),
                    instance_number=index + 1,
                )
                if ident.image_id in ids:
                    raise ConfigError(f"image id collision {ident.image_id}; use another --seed")
                ids.add(ident.image_id)
                write_dicom(slc, dicom_dir / f"{ident.image_id}.dcm", ident)
                ok, png = cv2.imencode(".png", mask_bits(slc.masks))
                if not ok:
                    raise ConfigError(f"could not encode the mask of {ident.image_id} as PNG")
                (mask_dir / f"{ident.image_id}.png").write_bytes(png.tobytes())
                labels = slc.labels
                csv_lines.extend(
                    f"{ident.image_id}_{name},{labels[name]}" for name in (*SUBTYPES, "any")
                )
                rows.append(
                    {
                        "path": f"{DICOM_DIR}/{ident.image_id}.dcm",
                        "source": SOURCE,
                        "label_any": labels["any"],
                        **{name: labels[name] for name in SUBTYPES},
                        "patient_id": patient_key(patient),
                        "study_uid": pseudonymize_uid(study_uid),
                        "series_uid": pseudonymize_uid(series_uid),
                        "slice_z": slc.z_mm,
                        "mask_path": f"{MASK_DIR}/{ident.image_id}.png",
                    }
                )
                bar.update(1)
    (out / CSV_NAME).write_text("\n".join(csv_lines) + "\n", encoding="ascii", newline="\n")
    _remove_stale(dicom_dir, "ID_*.dcm", {f"{i}.dcm" for i in ids})
    _remove_stale(mask_dir, "ID_*.png", {f"{i}.png" for i in ids})
    index = _typed_index(
        assign_splits(pd.DataFrame(rows), seed, group_col="patient_id", stratify_col="label_any")
    )
    index.to_parquet(out / INDEX_NAME, index=False)
    log.info("wrote %d slices of %d studies to %s", len(index), n_studies, out)
    return index


def _typed_index(frame: pd.DataFrame) -> pd.DataFrame:
    """The index with the column order and dtypes of docs/CONTRACTS.md (plus ``mask_path``)."""
    out = pd.DataFrame(
        {
            "path": frame["path"].astype(str),
            "source": frame["source"].astype(str),
            "label_any": frame["label_any"].astype(np.int8),
            **{name: frame[name].astype("Int8") for name in SUBTYPES},
            "patient_id": frame["patient_id"].astype("string"),
            "study_uid": frame["study_uid"].astype("string"),
            "series_uid": frame["series_uid"].astype("string"),
            "slice_z": frame["slice_z"].astype(np.float64),
            "split": frame["split"].astype("string"),
            "mask_path": frame["mask_path"].astype("string"),
        }
    )
    return out.reset_index(drop=True)


def summarize(index: pd.DataFrame) -> dict[str, object]:
    """Counts of a phantom index: studies, slices, positive slices per label, slices per split."""
    return {
        "studies": int(index["study_uid"].nunique()),
        "slices": len(index),
        "positives": {
            name: int(index["label_any" if name == "any" else name].sum()) for name in RSNA_LABELS
        },
        "positive_studies": int(index.groupby("study_uid")["label_any"].max().sum()),
        "splits": {name: int((index["split"] == name).sum()) for name in ("train", "val", "test")},
        "split_studies": {
            name: int(index.loc[index["split"] == name, "study_uid"].nunique())
            for name in ("train", "val", "test")
        },
    }
