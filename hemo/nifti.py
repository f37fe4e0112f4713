"""Read a NIfTI CT volume (``.nii``, ``.nii.gz``) as a series of axial slices in HU.

Head-CT research sets are often shared as NIfTI volumes (PhysioNet's CT-ICH, INSTANCE 2022,
CQ500 conversions). hemo reads one as a series: every axial slice becomes a
:class:`~hemo.dicom.CTSlice`, so prediction, series pooling, Grad-CAM and the pages treat it as
they treat a DICOM series.

Rules (all in memory: an upload is never written to disk):

* The kind is read from the bytes: a single-file NIfTI-1 (``n+1`` at byte 344, header size 348)
  or NIfTI-2 (``n+2`` at byte 4, header size 540), or a gzip stream holding one, decompressed
  under :data:`hemo.config.MAX_VOLUME_BYTES`. Header/image pairs (``.hdr``/``.img``) are refused.
  A file is read whole, so ``config.MAX_FILE_BYTES`` bounds a ``.nii`` as any file (gzip a
  larger volume).
* A 3-D volume, or 4-D with one volume; at most ``config.MAX_SLICES_PER_SERIES`` slices of at most
  ``config.MAX_PIXELS_PER_SLICE`` pixels (checked from the header, before any voxel is read).
* Axial slices are found from the affine (``nibabel.orientations.io_orientation``: the array axis
  closest to the head-foot axis), ordered inferior -> superior, and laid out as DICOM shows an
  axial slice (rows anterior -> posterior, columns patient right -> left); each slice's position,
  orientation and spacing are given in DICOM's patient coordinates (LPS), so ``slice_z_mm``
  orders the series as for DICOM.
* Voxel values go through the header's ``scl_slope``/``scl_inter`` (nibabel) and are taken as
  HU. NIfTI names no modality, so a volume without air (nothing under
  :data:`MAX_AIR_HU` HU in its sampled slices) is refused: it is not CT in HU (e.g. a volume
  scaled to 0-1 or 0-255). Values under ``config.HU_FLOOR`` become ``config.HU_AIR``, as for
  DICOM.
* A header whose ``qform_code`` and ``sform_code`` are both 0 has no orientation: its voxel axes
  are taken as RAS (nibabel's fallback affine), logged as a warning and kept as
  ``metadata["orientation_assumed"]``.
* ``frame`` is the slice's 1-based number in that order (``None`` for a single slice) and
  ``metadata["nifti_slice_index"]`` its 0-based index along the file's slice axis (to join
  labels given in the file's array order); the
  series and study are named ``nifti:<name>``. No free-text header field (``descrip``,
  ``aux_file``, ``intent_name``, ``db_name``) is ever read into the metadata.
"""

from __future__ import annotations

import io
import logging
import zlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt

from hemo import config
from hemo.dicom import CTSlice, _slice_z
from hemo.errors import InputError, LimitError
from hemo.images import GZIP_MAGIC, NIFTI_PAIR_MAGICS, nifti_version
from hemo.sources import Source, read_bytes, source_name

log = logging.getLogger(__name__)

#: Header sizes and magic offsets of NIfTI-1 and NIfTI-2.
NIFTI1_HEADER_BYTES = 348
NIFTI2_HEADER_BYTES = 540
NIFTI1_MAGIC_OFFSET = 344
NIFTI2_MAGIC_OFFSET = 4
#: A CT volume in HU has air: its sampled slices go below this (HU).
MAX_AIR_HU = -500.0
#: Slices read, evenly spaced, to check that the values are HU.
HU_CHECK_SLICES = 16
#: Prefix of the series and study name of a volume.
SERIES_PREFIX = "nifti:"
#: RAS+ (NIfTI) to LPS (DICOM) patient coordinates.
RAS_TO_LPS = np.array([-1.0, -1.0, 1.0])


#: Size of the gzip trailer (CRC32, ISIZE).
GZIP_TRAILER_BYTES = 8
#: Output decompressed per step.
GUNZIP_CHUNK_BYTES = 16 * 1024 * 1024


def gunzip(data: bytes, label: str, limit: int | None = None) -> bytes:
    """Decompress a gzip stream in memory, refusing more than ``limit`` bytes of output.

    Raises:
        LimitError: the stream holds more than ``limit`` (default ``config.MAX_VOLUME_BYTES``).
        InputError: not a readable gzip stream.
    """
    limit = config.MAX_VOLUME_BYTES if limit is None else limit
    too_big = LimitError(
        f"decompresses to more than {limit} bytes, the limit (config.MAX_VOLUME_BYTES)", label
    )
    # The gzip trailer states the size (mod 2**32): an honest bomb is refused unread
    if len(data) >= GZIP_TRAILER_BYTES and int.from_bytes(data[-4:], "little") > limit:
        raise too_big
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    out = bytearray()
    pending = data
    try:
        # in chunks into one growing buffer: the peak stays near the output (one call to
        # decompress() for the whole limit held about twice it)
        while pending or not inflater.eof:
            chunk = inflater.decompress(pending, min(GUNZIP_CHUNK_BYTES, limit + 1 - len(out)))
            out += chunk
            if len(out) > limit:
                raise too_big
            pending = inflater.unconsumed_tail
            if not chunk and not pending:
                break
    except zlib.error as exc:
        raise InputError(f"not a readable gzip stream ({exc})", label) from exc
    return bytes(out)


def read_nifti(source: Source, name: str | None = None) -> Iterator[CTSlice]:
    """Read a NIfTI CT volume (raw or gzip bytes, a path or an upload) as axial slices in HU.

    The file is checked at once (a problem raises here); slices are then read one at a time
    as the iterator is consumed.

    Args:
        source: Path, bytes or binary file-like object.
        name: Display name for messages and ``CTSlice.source``.

    Returns:
        An iterator over the axial slices, inferior -> superior (see the module docstring).

    Raises:
        InputError: not a single-file NIfTI (or a gzip of one), a header/image pair, an
            unreadable header, not 3-D, not HU.
        LimitError: over the size, slice or pixel limits.
    """
    label = source_name(source, name)
    data = read_bytes(source, label)
    if data.startswith(GZIP_MAGIC):
        data = gunzip(data, label)
    version = nifti_version(data[:NIFTI2_HEADER_BYTES])
    if version is None:
        raise InputError("not a NIfTI-1 or NIfTI-2 volume (no NIfTI header)", label)
    magic_offset = NIFTI1_MAGIC_OFFSET if version == 1 else NIFTI2_MAGIC_OFFSET
    if data[magic_offset : magic_offset + 4] in NIFTI_PAIR_MAGICS:
        raise InputError(
            "a NIfTI header without its image (a .hdr/.img pair): convert it to one .nii file "
            "(e.g. nibabel.save(nibabel.load('x.hdr'), 'x.nii'))",
            label,
        )
    image, shape, affine = _load(data, version, label)
    return _slices(image, shape, affine, version, label)


def _load(
    data: bytes, version: int, label: str
) -> tuple[Any, tuple[int, int, int], npt.NDArray[np.float64]]:
    """The nibabel image over ``data``, its 3-D shape and its affine (checked)."""
    import nibabel

    cls = nibabel.Nifti1Image if version == 1 else nibabel.Nifti2Image
    try:
        image = cls.from_bytes(data)
        shape = tuple(int(n) for n in image.header.get_data_shape())
        affine = np.asarray(image.affine, dtype=np.float64)
    except Exception as exc:  # nibabel raises many types on a corrupt header
        raise InputError(
            f"cannot read the NIfTI header ({type(exc).__name__}: {exc})", label
        ) from exc
    try:  # the header as stored (an image made from bytes reports its data offset as 0)
        stored = cls.header_class.from_fileobj(io.BytesIO(data))
        itemsize = np.dtype(stored.get_data_dtype()).itemsize
        offset = int(stored.get_data_offset())
    except Exception as exc:
        raise InputError(
            f"cannot read the NIfTI header ({type(exc).__name__}: {exc})", label
        ) from exc
    declared = offset + int(np.prod(shape, dtype=np.int64)) * itemsize
    if any(n < 1 for n in shape) or declared > len(data):
        raise InputError(
            f"the NIfTI header declares {shape} voxels of {itemsize} bytes from byte {offset} "
            f"({declared} bytes), but the file holds {len(data)}: it is truncated or its header "
            "lies",
            label,
        )
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise InputError(
            f"the NIfTI volume has shape {shape}: hemo reads one 3-D CT volume (x, y, z)", label
        )
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) == 0:
        raise InputError("the NIfTI affine is not a valid voxel-to-patient transform", label)
    return image, shape, affine  # type: ignore[return-value]


def _slices(
    image: Any,
    shape: tuple[int, int, int],
    affine: npt.NDArray[np.float64],
    version: int,
    label: str,
) -> Iterator[CTSlice]:
    """Check the volume (limits, HU) now; return an iterator reading the slices one by one."""
    import nibabel

    ornt = nibabel.orientations.io_orientation(affine)
    axis_of = {int(target): axis for axis, (target, _) in enumerate(ornt)}
    flip = {axis: float(ornt[axis][1]) for axis in range(3)}
    ax_r, ax_a, ax_s = axis_of[0], axis_of[1], axis_of[2]
    n_slices, rows, columns = shape[ax_s], shape[ax_a], shape[ax_r]
    if n_slices > config.MAX_SLICES_PER_SERIES:
        raise LimitError(
            f"the NIfTI volume has {n_slices} axial slices, more than the limit of "
            f"{config.MAX_SLICES_PER_SERIES} (config.MAX_SLICES_PER_SERIES)",
            label,
        )
    if rows * columns > config.MAX_PIXELS_PER_SLICE:
        raise LimitError(
            f"its axial slices are {rows} x {columns} = {rows * columns} pixels, more than the "
            f"limit of {config.MAX_PIXELS_PER_SLICE} (config.MAX_PIXELS_PER_SLICE)",
            label,
        )
    if n_slices * rows * columns > config.MAX_PIXELS_PER_FILE:
        raise LimitError(
            f"the NIfTI volume has {n_slices} x {rows} x {columns} = "
            f"{n_slices * rows * columns} voxels, more than the limit of "
            f"{config.MAX_PIXELS_PER_FILE} for one file (config.MAX_PIXELS_PER_FILE)",
            label,
        )
    # inferior -> superior; rows anterior -> posterior; columns patient right -> left
    order = range(n_slices) if flip[ax_s] > 0 else range(n_slices - 1, -1, -1)
    reverse_rows, reverse_columns = flip[ax_a] > 0, flip[ax_r] > 0

    def plane(index: int) -> npt.NDArray[np.float32]:
        slicer: list[Any] = [slice(None)] * 3
        slicer[ax_s] = index
        try:
            values = np.asarray(image.dataobj[tuple(slicer)], dtype=np.float32)
        except Exception as exc:  # a truncated or corrupt voxel block
            raise InputError(
                f"cannot read the NIfTI voxels ({type(exc).__name__}: {exc})", label
            ) from exc
        kept = [axis for axis in range(3) if axis != ax_s]
        values = values.transpose(kept.index(ax_a), kept.index(ax_r))
        if reverse_rows:
            values = values[::-1]
        if reverse_columns:
            values = values[:, ::-1]
        return np.ascontiguousarray(values)

    sampled = np.unique(np.linspace(0, n_slices - 1, min(HU_CHECK_SLICES, n_slices)).astype(int))
    lowest = min(float(np.nanmin(plane(k))) for k in sampled)
    if not lowest <= MAX_AIR_HU:
        raise InputError(
            f"its values do not look like Hounsfield units: nothing under {MAX_AIR_HU:g} (air) in "
            f"{len(sampled)} sampled slices, lowest {lowest:.4g}; hemo needs CT in HU (not a "
            "volume scaled to 0-1 or 0-255, nor MR)",
            label,
        )
    geometry = _geometry(affine, ax_r, ax_a, reverse_rows, reverse_columns, rows, columns)
    header = image.header
    slope, inter = header.get_slope_inter()
    base = {
        "format": f"NIfTI-{version}",
        "Modality": "CT",
        "Rows": rows,
        "Columns": columns,
        "NumberOfFrames": n_slices,
        "PixelSpacing": list(geometry["spacing"]),
        "SliceThickness": float(np.linalg.norm(affine[:3, ax_s])),
        "ImageOrientationPatient": list(geometry["orientation"]),
        "nifti_datatype": str(header.get_data_dtype()),
        "scl_slope": None if slope is None else float(slope),
        "scl_inter": None if inter is None else float(inter),
        "qform_code": int(header["qform_code"]),
        "sform_code": int(header["sform_code"]),
        "orientation_assumed": not (int(header["qform_code"]) or int(header["sform_code"])),
    }
    if base["orientation_assumed"]:
        log.warning(
            "%s: neither qform nor sform sets the orientation (both codes 0): the voxel axes are "
            "taken as RAS, so the slices may be mirrored or upside down",
            label,
        )
    series = f"{SERIES_PREFIX}{label}"

    def generate() -> Iterator[CTSlice]:
        for number, index in enumerate(order, start=1):
            hu = plane(index)
            np.putmask(hu, ~(hu >= config.HU_FLOOR), np.float32(config.HU_AIR))  # NaN too
            hu.setflags(write=False)
            voxel = np.zeros(4)
            voxel[ax_s], voxel[3] = index, 1.0
            voxel[ax_a] = rows - 1 if reverse_rows else 0
            voxel[ax_r] = columns - 1 if reverse_columns else 0
            position = tuple(float(v) for v in (affine @ voxel)[:3] * RAS_TO_LPS)
            orientation = geometry["orientation"]
            metadata = dict(base, ImagePositionPatient=list(position), nifti_slice_index=index)
            metadata["rescale_assumed"] = False
            metadata["rsna_12bit_fault_corrected"] = False
            yield CTSlice(
                hu=hu,
                source=label,
                pixel_spacing_mm=geometry["spacing"],
                slice_thickness_mm=base["SliceThickness"],
                position_mm=position,  # type: ignore[arg-type]
                orientation=orientation,
                slice_z_mm=_slice_z(position, orientation),
                instance_number=number,
                study_uid=series,
                series_uid=series,
                sop_uid=None,
                patient_key=None,
                default_window=None,
                modality="CT",
                metadata=metadata,
                frame=number if n_slices > 1 else None,
            )

    return generate()


def _geometry(
    affine: npt.NDArray[np.float64],
    ax_r: int,
    ax_a: int,
    reverse_rows: bool,
    reverse_columns: bool,
    rows: int,
    columns: int,
) -> dict[str, Any]:
    """Orientation (LPS row then column cosines) and (row, column) spacing of the slices."""
    along_columns = affine[:3, ax_r] * (-1.0 if reverse_columns else 1.0)  # as the column grows
    along_rows = affine[:3, ax_a] * (-1.0 if reverse_rows else 1.0)  # as the row grows
    row_cosines = along_columns / np.linalg.norm(along_columns) * RAS_TO_LPS
    column_cosines = along_rows / np.linalg.norm(along_rows) * RAS_TO_LPS
    return {
        "orientation": tuple(float(v) for v in (*row_cosines, *column_cosines)),
        "spacing": (float(np.linalg.norm(along_rows)), float(np.linalg.norm(along_columns))),
    }
