"""Ready decoders for sample fields, chosen by extension as webdataset's autodecode does.

The extension's last dot-separated part decides (``"seg.png"`` decodes as ``png``), lower-cased:

=====================================================  ===============================================
extension                                              result
=====================================================  ===============================================
``cls cls2 class count index inx id``                  ``int``
``txt text transcript``                                ``str`` (UTF-8)
``json jsn``                                           the parsed JSON value
``npy``                                                zero-copy read-only ``np.ndarray``
``npz``                                                ``dict[str, np.ndarray]`` (zero-copy if stored)
``jpg jpeg png ppm pgm pbm pnm bmp webp gif tif tiff``  ``image="numpy"``: ``uint8`` array H x W x C;
                                                       ``"pil"``: a ``PIL.Image.Image``; ``"raw"``: kept
``pyd pickle``                                         kept raw unless ``allow_pickle=True``
anything else                                          the raw data, unchanged
=====================================================  ===============================================

Images need Pillow (``pip install 's3dlio[images]'``), imported on first use. In numpy mode an
image keeps its channels where they are 8-bit (``L`` -> 1 channel, ``RGB`` -> 3, ``RGBA`` -> 4);
other modes (palette, 1-bit, CMYK, 16-bit, ...) are converted to RGB, or RGBA when they carry
transparency. Pickle is never decoded by default: unpickling fetched data can run arbitrary code.
"""

from __future__ import annotations

import io
import json
import pickle
from collections.abc import Callable
from typing import Any, Literal

import numpy as np

from ..exceptions import InvalidConfigError
from .npy import decode_npy, decode_npz

__all__ = ["IMAGE_EXTENSIONS", "Decoder", "decode_field", "decode_sample", "make_decoder"]

ImageMode = Literal["numpy", "pil", "raw"]

IMAGE_EXTENSIONS = frozenset(
    ("jpg", "jpeg", "png", "ppm", "pgm", "pbm", "pnm", "bmp", "webp", "gif", "tif", "tiff")
)
_INT = frozenset(("cls", "cls2", "class", "count", "index", "inx", "id"))
_TEXT = frozenset(("txt", "text", "transcript"))
_JSON = frozenset(("json", "jsn"))
_PICKLE = frozenset(("pyd", "pickle"))
_IMAGE_MODES = ("numpy", "pil", "raw")


def _text(data: Any) -> str:
    if isinstance(data, str):
        return data
    return str(memoryview(data), "utf-8") if not isinstance(data, bytes) else data.decode("utf-8")


def _image(data: Any, image: str) -> Any:
    try:
        from PIL import Image
    except ImportError as e:
        raise ImportError(
            f"decoding images needs Pillow: pip install 's3dlio[images]' (or pass image='raw'): {e}"
        ) from e
    # COPY: Pillow reads from a file object; BytesIO copies the encoded bytes (the decoded image is
    # new memory anyway).
    img: Image.Image = Image.open(io.BytesIO(data))
    img.load()
    if image == "pil":
        return img
    if img.mode not in ("L", "RGB", "RGBA"):
        alpha = "A" in img.getbands() or "transparency" in img.info
        img = img.convert("RGBA" if alpha else "RGB")
    arr = np.asarray(img, dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


def decode_field(ext: str, data: Any, *, image: ImageMode = "numpy", allow_pickle: bool = False) -> Any:
    """Decode one sample field by its extension ``ext`` (see the module docstring); an unknown
    extension returns ``data`` unchanged."""
    kind = ext.rsplit(".", 1)[-1].lower()
    if kind in _INT:
        return int(_text(data))
    if kind in _TEXT:
        return _text(data)
    if kind in _JSON:
        return json.loads(_text(data))
    if kind == "npy":
        return decode_npy(data)
    if kind == "npz":
        return decode_npz(data)
    if kind in IMAGE_EXTENSIONS:
        if image not in _IMAGE_MODES:
            raise InvalidConfigError(f"image={image!r}: expected one of {_IMAGE_MODES}")
        return data if image == "raw" else _image(data, image)
    if kind in _PICKLE and allow_pickle:
        return pickle.loads(data)  # noqa: S301 -- explicitly allowed by the caller
    return data


def decode_sample(
    sample: dict[str, Any], *, image: ImageMode = "numpy", allow_pickle: bool = False
) -> dict[str, Any]:
    """A new dict with :func:`decode_field` applied to every field whose key does not start with
    ``"__"`` (``__key__``, ``__url__``, ... pass through)."""
    return {
        k: v if k.startswith("__") else decode_field(k, v, image=image, allow_pickle=allow_pickle)
        for k, v in sample.items()
    }


class Decoder:
    """A picklable callable that applies :func:`decode_sample` with fixed options (it survives
    ``spawn`` DataLoader workers, where a lambda would not)."""

    __slots__ = ("allow_pickle", "image")

    def __init__(self, *, image: ImageMode = "numpy", allow_pickle: bool = False) -> None:
        if image not in _IMAGE_MODES:
            raise InvalidConfigError(f"image={image!r}: expected one of {_IMAGE_MODES}")
        self.image: ImageMode = image
        self.allow_pickle = allow_pickle

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        return decode_sample(sample, image=self.image, allow_pickle=self.allow_pickle)

    def __getstate__(self) -> dict[str, Any]:
        return {"image": self.image, "allow_pickle": self.allow_pickle}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.image = state["image"]
        self.allow_pickle = state["allow_pickle"]

    def __repr__(self) -> str:
        return f"Decoder(image={self.image!r}, allow_pickle={self.allow_pickle})"


def make_decoder(
    *, image: ImageMode = "numpy", allow_pickle: bool = False
) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A picklable sample decoder: ``make_decoder(image="pil")(sample)`` is
    ``decode_sample(sample, image="pil")``."""
    return Decoder(image=image, allow_pickle=allow_pickle)
