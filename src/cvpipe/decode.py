"""Decode an image file's bytes with OpenCV into 8-bit, 3-channel RGB, or say why it is bad.

Conversion rule (applied by the index check and by preprocessing alike):

- 16-bit images are scaled linearly from 0..65535 to 0..255 (no per-image stretching, so
  intensities stay comparable between images); float images are clipped to 0..1, then scaled.
- Grayscale is copied to all three channels.
- Alpha is dropped (gray+alpha keeps the gray, RGBA keeps RGB), as PIL's `convert("RGB")` does
  for torchvision's `ImageFolder`.
- Palette images are expanded to their colours by the decoder.
- EXIF orientation is not applied (neither does `ImageFolder`'s PIL loader).

Reduced decoding (`decode_rgb8(data, reduce=2|4|8)`, for JPEG only): libjpeg scales the image
down by that factor while decoding (its scaled inverse DCT, OpenCV's `IMREAD_REDUCED_COLOR_*`),
which skips most of the decoding work when the image is to be shrunk anyway. Those flags would
apply EXIF orientation; `IMREAD_IGNORE_ORIENTATION` keeps the rule above. Other formats ignore
`reduce`.

A file is bad when it is empty, not a recognised image, cut short (JPEG without its end-of-image
marker, PNG without its IEND chunk: OpenCV would otherwise return the decoded part silently), or
fails to decode. The index check also reads every JPEG's entropy-coded data with Pillow
(`check_stream`): libjpeg only warns of corrupt data ("Corrupt JPEG data: premature end of data
segment") and OpenCV then returns an image with garbage or grey blocks, where Pillow raises.
"""

from __future__ import annotations

import io

import cv2
import numpy as np

# Pillow is not a direct dependency: torchvision and matplotlib both require it.
from PIL import Image

# Corrupt files make libpng/libjpeg print warnings through OpenCV's logger; bad files are
# reported by the index stage instead, one clear list for all of them.
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)

_MAGIC = {
    b"\xff\xd8\xff": "jpeg",
    b"\x89PNG\r\n\x1a\n": "png",
    b"BM": "bmp",
    b"II*\x00": "tiff",
    b"MM\x00*": "tiff",
    b"GIF87a": "gif",  # OpenCV reads the first frame
    b"GIF89a": "gif",
}
# What `sniff_format` recognises, for the message about any other file.
FORMATS = "PNG, JPEG, BMP, TIFF, WebP or GIF (its first frame)"


class BadImage(Exception):
    """The file cannot be used as an image; `str(exc)` says why."""


def sniff_format(data: bytes) -> str | None:
    """The image format from the file's first bytes, or None if unrecognised."""
    for magic, name in _MAGIC.items():
        if data.startswith(magic):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def _check_complete(data: bytes, fmt: str) -> None:
    if fmt == "jpeg" and not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        raise BadImage("truncated JPEG (no end-of-image marker)")
    if fmt == "png" and b"IEND" not in data[-16:]:
        raise BadImage("truncated PNG (no IEND chunk)")


def check_stream(data: bytes) -> None:
    """Raise BadImage if a JPEG's compressed data is corrupt (see the module docstring).

    Only a failure while reading pixels counts: a JPEG variant that Pillow cannot open at all
    (and OpenCV decodes) is left to OpenCV's verdict.
    """
    if sniff_format(data) != "jpeg":
        return
    try:
        image = Image.open(io.BytesIO(data))
    except Exception:  # not Pillow's to judge, see above
        return
    _load_stream(image)


def _load_stream(image: Image.Image) -> None:
    try:
        image.load()
    except OSError as exc:
        reason = str(exc).replace("broken data stream when reading image file", "").strip()
        raise BadImage(f"corrupt JPEG data ({reason or 'broken data stream'})") from None


_JPEG_CHANNELS = {"L": 1, "RGB": 3}  # Pillow's modes of plain 8-bit JPEGs -> OpenCV's channels


def check_jpeg(data: bytes) -> tuple[int, int, int, int] | None:
    """(width, height, channels, bit depth) of a plain 8-bit JPEG as `decode` gives them, after
    the checks of `decode` and `check_stream` with the same verdicts, but decoded at 1/8 scale
    (a scaled decode still reads all the compressed data, where corruption shows); None for
    other data, which needs `decode` and `check_stream` in full."""
    if sniff_format(data) != "jpeg":
        return None
    try:
        image = Image.open(io.BytesIO(data))
    except Exception:  # OpenCV's verdict, in full
        return None
    channels = _JPEG_CHANNELS.get(image.mode)
    if channels is None:
        return None
    _decode_jpeg(data, cv2.IMREAD_REDUCED_GRAYSCALE_8)
    width, height = image.size
    image.draft(image.mode, (width // 8, height // 8))
    _load_stream(image)
    return width, height, channels, 8


def to_rgb8(image: np.ndarray) -> np.ndarray:
    """Convert a decoded OpenCV image (BGR order, any depth/channels) to HxWx3 uint8 RGB."""
    if image.dtype == np.uint16:
        image = ((image.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    elif image.dtype in (np.float32, np.float64):
        image = (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise BadImage(f"unsupported pixel type {image.dtype}")
    channels = 1 if image.ndim == 2 else image.shape[2]
    if channels in (1, 2):
        gray = image if image.ndim == 2 else image[:, :, 0]
        return cv2.cvtColor(np.ascontiguousarray(gray), cv2.COLOR_GRAY2RGB)
    if channels == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if channels == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    raise BadImage(f"unsupported number of channels: {channels}")


def decode(data: bytes) -> np.ndarray:
    """Decode file bytes as stored (OpenCV `IMREAD_UNCHANGED`), after the completeness check."""
    if not data:
        raise BadImage("empty file (0 bytes)")
    fmt = sniff_format(data)
    if fmt is None:
        raise BadImage(f"not an image, or an unsupported format (cvpipe reads {FORMATS})")
    _check_complete(data, fmt)
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise BadImage(f"{fmt} decoder error: {exc.err}") from None
    if image is None or image.size == 0:
        raise BadImage(f"corrupt {fmt.upper()} (the decoder could not read it)")
    return image


_REDUCED = {
    2: cv2.IMREAD_REDUCED_COLOR_2,
    4: cv2.IMREAD_REDUCED_COLOR_4,
    8: cv2.IMREAD_REDUCED_COLOR_8,
}
REDUCTIONS = (8, 4, 2)  # the factors of reduced decoding, largest first


def decode_rgb8(data: bytes, reduce: int = 1) -> np.ndarray:
    """Decode file bytes to HxWx3 uint8 RGB by the rule in this module's docstring; a JPEG
    with `reduce` 2, 4 or 8 comes out that many times smaller (rounded up)."""
    if reduce == 1 or sniff_format(data) != "jpeg":
        return to_rgb8(decode(data))
    return cv2.cvtColor(decode_reduced_bgr(data, reduce), cv2.COLOR_BGR2RGB)


def decode_reduced_bgr(data: bytes, reduce: int) -> np.ndarray:
    """A JPEG's bytes decoded `reduce` (2, 4 or 8) times smaller, HxWx3 uint8 in OpenCV's BGR
    order (for a caller that turns it into RGB later, on fewer pixels)."""
    return _decode_jpeg(data, _REDUCED[reduce])


def _decode_jpeg(data: bytes, flags: int) -> np.ndarray:
    """OpenCV's decode of a complete JPEG with `flags` (EXIF orientation ignored), or BadImage."""
    _check_complete(data, "jpeg")
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), flags | cv2.IMREAD_IGNORE_ORIENTATION)
    except cv2.error as exc:
        raise BadImage(f"jpeg decoder error: {exc.err}") from None
    if image is None or image.size == 0:
        raise BadImage("corrupt JPEG (the decoder could not read it)")
    return image


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's header without decoding it; None for other formats."""
    if sniff_format(data) != "jpeg":
        return None
    try:
        return Image.open(io.BytesIO(data)).size
    except Exception:  # the decoder's verdict comes later
        return None
