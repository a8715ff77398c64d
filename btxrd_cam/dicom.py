"""DICOM radiographs (DX, CR, …) → the same 8-bit grey pixels the JPEG path gives: a decoder of the data layer.

The display pipeline of DICOM PS3.3 C.11, in order: stored values → modality LUT (Rescale Slope/Intercept, or a
Modality LUT Sequence) → VOI (a VOI LUT Sequence, else Window Center/Width — the first pair when there are several
— honouring VOILUTFunction LINEAR, LINEAR_EXACT or SIGMOID) → MONOCHROME1 inverted after the VOI step, and
PresentationLUTShape INVERSE likewise → 8 bits. `--dicom-window minmax` or `percentile` (0.5–99.5 % of the modality
values) replace the VOI step; `file` falls back to `minmax` when the file has no window — except for files whose
stored values already are display values (at most 8 bits stored, no rescale, no modality LUT), which are shown as
stored, like their PNG twin. Deeper data without a window keeps `minmax`: a 12- or 16-bit detector rarely fills its
stored range, so the full range would show a flat, dark image, and viewers default to the data's own range too.

Compressed transfer syntaxes decode through pydicom's plugins (installed with `btxrd-cam[dicom]`, all MIT or BSD
licensed): pylibjpeg-openjpeg (JPEG 2000), pylibjpeg-rle (RLE), pyjpegls (JPEG-LS) and python-gdcm (JPEG
baseline, extended and lossless). Privacy: nothing identifying leaves this module — the record carries Modality,
PhotometricInterpretation, BitsStored, the transfer syntax, the frame count and the window used; pydicom's warnings
(which may quote element values) are silenced and its error messages are not passed on where they could quote them.
Not for: deciding which files are images (data.py).
"""

from __future__ import annotations

import io
import math
import re
import warnings
from pathlib import Path

import numpy as np

from btxrd_cam.errors import InputError

DICOM_SUFFIXES = (".dcm", ".dicom")
COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_PARTIAL_420", "YBR_ICT", "YBR_RCT", "PALETTE COLOR")
WINDOW_MODES = ("file", "minmax", "percentile")
PERCENTILES = (0.5, 99.5)
INSTALL_HINT = "pip install 'btxrd-cam[dicom]' (pydicom with its decoders)"
# what to install for a compressed transfer syntax no installed plugin decodes (UID prefix → package)
PLUGINS = {
    "1.2.840.10008.1.2.4.5": "python-gdcm (JPEG baseline, extended, lossless)",
    "1.2.840.10008.1.2.4.6": "python-gdcm (JPEG lossless)",
    "1.2.840.10008.1.2.4.7": "python-gdcm (JPEG lossless)",
    "1.2.840.10008.1.2.4.8": "pyjpegls (JPEG-LS)",
    "1.2.840.10008.1.2.4.9": "pylibjpeg-openjpeg (JPEG 2000)",
    "1.2.840.10008.1.2.4.20": "pylibjpeg-openjpeg (HTJ2K)",
    "1.2.840.10008.1.2.5": "pylibjpeg-rle (RLE)",
}


# syntaxes whose only pip-installable decoder is GPL-licensed, which btxrd-cam does not install
GPL_ONLY = {
    "1.2.840.10008.1.2.4.51": "12-bit JPEG Extended decodes with pylibjpeg-libjpeg (GPL-3.0), which btxrd-cam does "
    "not install for its licence: install it yourself, or convert the file (e.g. gdcmconv --raw)",
}


def has_dicom_preamble(path: Path) -> bool:
    """Whether the file carries the DICOM preamble: `DICM` at byte 128."""
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def is_dicom(path: Path) -> bool:
    """A `.dcm`/`.dicom` file, or a file without a suffix that carries the DICOM preamble."""
    path = Path(path)
    suffix = path.suffix.lower()
    return suffix in DICOM_SUFFIXES or (suffix == "" and has_dicom_preamble(path))


def window_linear(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """The VOI window of PS3.3 C.11.2.1.2 (LINEAR) and C.11.2.1.3 (LINEAR_EXACT, SIGMOID) onto [0, 255], float64."""
    x = values.astype(np.float64)
    if function == "SIGMOID":
        return 255.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    if function == "LINEAR_EXACT":
        y = ((x - center) / width + 0.5) * 255.0
        return np.clip(y, 0.0, 255.0)
    if width <= 1:  # the linear window degenerates to a step at c - 0.5
        return np.where(x > center - 0.5, 255.0, 0.0)
    y = ((x - (center - 0.5)) / (width - 1) + 0.5) * 255.0
    return np.clip(y, 0.0, 255.0)


def _first(value) -> float | None:
    """The first value of a (possibly multi-valued) DS element as a finite float."""
    if value is None:
        return None
    try:
        values = [value] if isinstance(value, (str, bytes, float, int)) else list(value)
        number = float(values[0])
    except (TypeError, ValueError, IndexError):
        return None
    return number if math.isfinite(number) else None


def _stretch(values: np.ndarray, low: float, high: float) -> np.ndarray:
    if high <= low:
        return np.zeros_like(values, dtype=np.float64)
    return np.clip((values.astype(np.float64) - low) * (255.0 / (high - low)), 0.0, 255.0)


def _display_values(ds, values: np.ndarray) -> bool:
    """Whether the stored values already are display values: at most 8 bits stored, no rescale and no modality LUT
    (a secondary capture or an 8-bit export of a radiograph). Those are shown as stored, as their PNG twin would be;
    stretching them to their own min–max would change the image the model sees."""
    slope, intercept = _first(ds.get("RescaleSlope")), _first(ds.get("RescaleIntercept"))
    rescaled = (slope not in (None, 1.0)) or (intercept not in (None, 0.0)) or bool(ds.get("ModalityLUTSequence"))
    try:
        bits = int(ds.get("BitsStored") or 0)
    except (TypeError, ValueError, OverflowError):
        return False
    return 0 < bits <= 8 and not rescaled and values.size > 0 and values.min() >= 0 and values.max() <= 255


def _voi(ds, values: np.ndarray, mode: str, warnings_out: list[str], path: Path) -> tuple[np.ndarray, dict]:
    """The VOI step → float64 in [0, 255], and the window used (for the record)."""
    from pydicom.pixels import apply_voi

    if mode == "file":
        if ds.get("VOILUTSequence"):
            item = ds.VOILUTSequence[0]
            descriptor = list(item.get("LUTDescriptor") or [])
            bits = int(descriptor[2]) if len(descriptor) > 2 and str(descriptor[2]).isdigit() else 16
            if not 1 <= bits <= 32:
                raise InputError(path, "the DICOM element LUTDescriptor is out of range")
            lut = apply_voi(values, ds, index=0)
            return _stretch(lut, 0, 2**bits - 1), {"source": "voi_lut", "lut_bits": bits}
        center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
        if center is not None and width is not None and width > 0:
            function = str(ds.get("VOILUTFunction") or "LINEAR").upper()
            if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
                warnings_out.append("the file's VOILUTFunction is not LINEAR, LINEAR_EXACT or SIGMOID: LINEAR used")
                function = "LINEAR"
            window = {"source": "file", "center": center, "width": width, "function": function}
            return window_linear(values, center, width, function), window
        if center is not None or width is not None:
            warnings_out.append("the file's window is unusable: minmax used")
        if _display_values(ds, values):
            return values.astype(np.float64), {"source": "stored (8-bit values without a window are display values)"}
        mode = "minmax"
        source = "minmax (the file has no window)"
    else:
        source = mode
    if mode == "percentile":
        low, high = (float(v) for v in np.percentile(values, PERCENTILES))
    else:
        low, high = float(values.min()), float(values.max())
    return _stretch(values, low, high), {"source": source, "low": low, "high": high}


def element_int(ds, keyword: str, path: Path, default: int, low: int = 0, high: int = 1 << 31) -> int:
    """A whole-number element (Rows, NumberOfFrames, …) as an int in [low, high]; InputError naming the element —
    never quoting its value, which a crafted file may fill with anything (a patient's ID)."""
    try:
        value = ds.get(keyword)
        if value is None or value == "":
            return default
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        raise InputError(path, f"the DICOM element {keyword} is not a whole number") from None
    if not low <= number <= high:
        raise InputError(path, f"the DICOM element {keyword} is out of range ({low} to {high})")
    return number


MODALITY = re.compile(r"[A-Z]{2,4}")


def _modality(ds) -> str | None:
    """The Modality when it is a modality code (DX, CR, OT, …), else None: nothing else of the element is passed on."""
    value = str(ds.get("Modality") or "").strip()
    return value if MODALITY.fullmatch(value) else None


DEFLATED = "1.2.840.10008.1.2.1.99"


def _check_inflated_size(data: bytes, path: Path, limit: int) -> None:
    """A deflated DICOM inflates in memory before anything else can be checked: refuse one whose data would inflate
    beyond `limit` bytes, inflating at most that much to find out (a 1.4 MB file can hold 5.6 GB)."""
    import zlib

    if _transfer_syntax(data) != DEFLATED:
        return
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        inflated = inflater.decompress(data[_meta_end(data) :], limit + 1)
    except (zlib.error, ValueError):
        raise InputError(path, "deflated DICOM data is corrupt") from None
    if len(inflated) > limit:
        raise InputError(path, f"deflated DICOM data inflates beyond {limit // 2**20} MB: refused before inflating")


def _transfer_syntax(data: bytes) -> str | None:
    """The TransferSyntaxUID of a Part 10 file, read from its file meta group (explicit VR little endian, as the
    standard requires) without parsing the rest; None when the file has no such group."""
    import struct

    if data[128:132] != b"DICM":
        return None
    offset, end = 132, min(len(data), _meta_end(data)) if len(data) >= 144 else 0
    while offset + 8 <= end:
        group, element = struct.unpack_from("<HH", data, offset)
        vr = data[offset + 4 : offset + 6]
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN"):
            length, header = struct.unpack_from("<I", data, offset + 8)[0], 12
        else:
            length, header = struct.unpack_from("<H", data, offset + 6)[0], 8
        if (group, element) == (0x0002, 0x0010):
            return data[offset + header : offset + header + length].decode("ascii", "ignore").strip("\x00 ")
        offset += header + length
    return None


def _meta_end(data: bytes) -> int:
    """Where the file meta group ends (after the preamble, `DICM` and the group's FileMetaInformationGroupLength)."""
    import struct

    offset = 132  # preamble and DICM
    # (0002,0000) UL 4 <length>: explicit VR little endian, as the standard requires for the file meta
    length = struct.unpack_from("<I", data, offset + 8)[0]
    return offset + 12 + length


def _decode_first_frame(ds, path: Path):
    from pydicom.pixels import pixel_array

    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    frames = element_int(ds, "NumberOfFrames", path, 1, 1, 1 << 20)
    try:
        return pixel_array(ds, index=0 if frames > 1 else None), frames
    except (NotImplementedError, RuntimeError) as exc:
        message = " ".join(str(exc).split())
        name, uid = getattr(syntax, "name", None) or str(syntax), str(syntax)
        if "exceptions were raised by all available plugins" in message:  # installed, but none can do this file
            detail = message.split(":", 2)[-1].strip()[:160]
            hint = f"; {GPL_ONLY[uid]}" if uid in GPL_ONLY else ""
            raise InputError(path, f"the installed decoders cannot decode {name} ({uid}): {detail}{hint}") from None
        if any(word in message.lower() for word in ("decoder", "plugin", "unable to decode")):
            package = next((v for k, v in PLUGINS.items() if uid.startswith(k)), "a pydicom decoder plugin")
            reason = f"no installed decoder for transfer syntax {name} ({uid}): install {package}"
            raise InputError(path, reason) from None
        raise InputError(path, f"cannot decode the pixel data ({type(exc).__name__})") from None
    except (ValueError, TypeError, AttributeError, KeyError, IndexError, EOFError, OSError) as exc:
        raise InputError(path, f"pixel data does not match the header ({_safe_reason(exc)})") from None


def _safe_reason(exc: BaseException) -> str:
    """pydicom's reasons about sizes and syntaxes are kept; anything that might quote an element value is not."""
    text = " ".join(str(exc).split())
    allowed = ("bytes", "length", "expected", "pixel data", "frames", "shape", "transfer syntax")
    return text[:160] if any(word in text.lower() for word in allowed) and "'" not in text else type(exc).__name__


def read_dicom(
    path: Path, data: bytes, window: str = "file", max_pixels: int | None = None, inflated_limit: int = 512 * 2**20
):
    """Decode a DICOM radiograph. Returns (pixels uint8 [H, W], (H, W), info, warnings); InputError naming the file
    and a reason (never an element's value) for anything that is not a usable single-channel radiograph."""
    try:
        import pydicom
        from pydicom.pixels import apply_modality_lut
    except ImportError:
        raise InputError(path, f"reading DICOM needs pydicom: {INSTALL_HINT}") from None
    if window not in WINDOW_MODES:
        raise ValueError(f"window must be one of {', '.join(WINDOW_MODES)}")
    try:
        notes: list[str] = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom's warnings may quote element values, patients' names among them
            _check_inflated_size(data, path, inflated_limit)
            try:
                ds = pydicom.dcmread(io.BytesIO(data), force=Path(path).suffix.lower() in DICOM_SUFFIXES)
            except Exception as exc:
                raise InputError(path, f"not a readable DICOM file ({type(exc).__name__})") from None
            if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
                if data[128:132] != b"DICM" and "SOPClassUID" not in ds:
                    raise InputError(path, "not a DICOM file (no DICM preamble, no pixel data)")
                kind = _modality(ds)
                raise InputError(path, f"DICOM without pixel data{f' ({kind} object)' if kind else ''}: not an image")
            photometric = str(ds.get("PhotometricInterpretation") or "").strip().upper()
            samples = element_int(ds, "SamplesPerPixel", path, 1, 1, 4)
            if photometric not in ("MONOCHROME1", "MONOCHROME2") or samples != 1:
                shown = photometric if photometric in COLOUR else "neither MONOCHROME1 nor MONOCHROME2"
                raise InputError(
                    path,
                    f"photometric interpretation {shown} ({samples} samples per pixel) is not a grey radiograph: "
                    "refused (btxrd-cam reads MONOCHROME1/2; convert colour images to greyscale first)",
                )
            rows = element_int(ds, "Rows", path, 0, 0, 65535)
            columns = element_int(ds, "Columns", path, 0, 0, 65535)
            if rows < 1 or columns < 1:
                raise InputError(path, "DICOM header declares no image size (Rows/Columns)")
            if max_pixels and rows * columns > max_pixels:
                raise InputError(path, f"image too large ({columns}x{rows} pixels; the limit is {max_pixels:,})")
            stored, frames = _decode_first_frame(ds, path)
            if stored.ndim != 2 or stored.shape != (rows, columns):
                raise InputError(path, f"pixel data of shape {list(stored.shape)} does not match {rows}x{columns}")
            if frames > 1:
                notes.append(f"multi-frame DICOM ({frames} frames): the first frame is used")
            values = apply_modality_lut(stored, ds)
            shown, window_used = _voi(ds, np.asarray(values), window, notes, path)
            inverse = str(ds.get("PresentationLUTShape") or "").upper() == "INVERSE"
            if (photometric == "MONOCHROME1") != inverse:
                shown = 255.0 - shown
            pixels = np.floor(shown + 0.5).astype(np.uint8)
            syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
            info = {
                "format": "DICOM",
                "modality": _modality(ds),
                "photometric_interpretation": photometric,
                "bits_stored": element_int(ds, "BitsStored", path, 0, 0, 64) or None,
                "transfer_syntax": getattr(syntax, "name", None) or (str(syntax) if syntax else None),
                "frames": frames,
                "window": window_used,
            }
    except InputError:
        raise
    except Exception as exc:  # pydicom's messages quote element values: name the kind of fault only
        raise InputError(path, f"a DICOM element's value is not of its declared form ({type(exc).__name__})") from None
    return np.ascontiguousarray(pixels), (rows, columns), info, notes
