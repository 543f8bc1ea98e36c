"""Encoded image bytes → uint8 (H, W, C) arrays with the picture's natural channels.

JPEGs go through simplejpeg (libjpeg-turbo, straight into a numpy array) when it is installed:
for CIFAR-10's 32×32 JPEGs it takes ~16 µs against Pillow's ~125 µs, most of which is Pillow's
per-file machinery (format probing, the ImageFile object), not the decoding itself. Both run
libjpeg-turbo's accurate integer DCT and smooth chroma upsampling, so they give the same pixels
(tests/test_data_decode.py compares them). Everything else, and the JPEGs simplejpeg does not
map to our channels (CMYK, YCCK), goes through Pillow; so does any JPEG simplejpeg refuses
(unusual subsampling, recoverable damage that Pillow tolerates), so that exactly the files
Pillow can read are readable.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from .transforms import pil_to_array

try:  # optional: the fast path for JPEGs (pip install simplejpeg); Pillow decodes them without it
    import simplejpeg
except ImportError:  # pragma: no cover - exercised by forcing use_simplejpeg=False in the tests
    simplejpeg = None

JPEG_EXTS = ("jpg", "jpeg")
# libjpeg colour spaces → the colorspace simplejpeg should produce (our natural channel count)
_SIMPLEJPEG_OUTPUT = {"RGB": "RGB", "YCbCr": "RGB", "Gray": "GRAY"}
# what each decoder raises for data it cannot read
DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


class ImageDecodeError(ValueError):
    """The bytes are not a readable image; the message says why."""


def decode_image(data: bytes, ext: str, *, use_simplejpeg: bool = True) -> np.ndarray:
    """uint8 (H, W, C), C = 1, 3 or 4 as the picture has it (see `pil_to_array`).

    ``ext`` (the member's extension, lower case) only picks the fast path; Pillow still reads the
    actual format from the bytes. Unreadable data raises `ImageDecodeError`.
    """
    try:
        if use_simplejpeg and simplejpeg is not None and ext in JPEG_EXTS:
            a = _simplejpeg_decode(data)
            if a is not None:
                return a
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return pil_to_array(img)
    except DECODE_ERRORS as e:
        raise ImageDecodeError(str(e) or type(e).__name__) from None


def _simplejpeg_decode(data: bytes) -> np.ndarray | None:
    """The JPEG decoded by simplejpeg, or None when Pillow should take it.

    simplejpeg is strict (any libjpeg warning raises ValueError); Pillow then has the last word,
    and raises for the files that are really broken.
    """
    try:
        height, width, colorspace, _subsampling = simplejpeg.decode_jpeg_header(data)
        output = _SIMPLEJPEG_OUTPUT.get(colorspace)
        if output is None or height * width > (Image.MAX_IMAGE_PIXELS or float("inf")):
            return None  # Pillow converts CMYK its own way, and warns of or refuses huge pictures
        a = simplejpeg.decode_jpeg(data, colorspace=output)
    except ValueError:
        return None
    return a if a.ndim == 3 else a[..., None]
