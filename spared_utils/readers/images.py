"""H&E images: read (any size, as RGB ``uint8``), their size without decoding, downscaled copies,
and whether the full-resolution image is kept in memory.
"""

from __future__ import annotations

import contextlib
import gzip
import io
from pathlib import Path

import numpy as np
from PIL import Image

from .files import PathLike, ReaderError, _stem

__all__ = ["FULLRES_AUTO_MAX_PIXELS", "IMAGE_SUFFIXES", "as_rgb_uint8", "image_size", "read_image", "read_image_scaled"]


#: Full-resolution images up to this many pixels are kept in memory (``load_fullres="auto"``).
FULLRES_AUTO_MAX_PIXELS = 25_000_000

IMAGE_SUFFIXES = (".tif", ".tiff", ".btf", ".jpg", ".jpeg", ".png")


@contextlib.contextmanager
def _no_pixel_limit():
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # whole-slide images exceed PIL's decompression-bomb guard
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def as_rgb_uint8(array: np.ndarray, source: PathLike | str = "image") -> np.ndarray:
    """An image as ``(H, W, 3)`` uint8: grey, channel-first and RGBA fixed, 16-bit and 0–1 floats rescaled.

    Raises :class:`ReaderError` naming ``source`` when the array is not an image.
    """
    path = source
    array = np.asarray(array)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.ndim == 3 and array.shape[0] in (3, 4) and array.shape[2] not in (3, 4):
        array = np.moveaxis(array, 0, -1)  # planar (C, H, W) TIFF
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ReaderError(f"{path}: expected an RGB image, got an array of shape {array.shape}; the file is corrupt, "
                          "truncated or not an H&E image: replace it (download it again)")
    array = array[..., :3]
    if array.dtype == np.uint16:
        array = (array.astype(np.float32) / 65535.0 * 255.0).round()
    elif np.issubdtype(array.dtype, np.floating):
        array = array * 255.0 if array.max(initial=0) <= 1.0 else array
    return np.clip(array, 0, 255).astype(np.uint8)


def image_size(path: PathLike) -> tuple[int, int]:
    """(width, height) of an image file without decoding its pixels."""
    path = Path(path)
    try:
        if _is_tiff(path):
            import tifffile

            with tifffile.TiffFile(_tiff_source(path)) as tif:
                shape = tif.pages[0].shape
                axes = tif.pages[0].axes
            h, w = (shape[axes.index("Y")], shape[axes.index("X")]) if "Y" in axes else shape[:2]
            return int(w), int(h)
        with _no_pixel_limit(), _open_image(path) as im:
            return im.size
    except ReaderError:
        raise
    except Exception as err:  # noqa: BLE001 - any decoder failure means the same to the user
        raise ReaderError(f"{path}: cannot read the image ({type(err).__name__}: {err}); the file is "
                          "corrupt or not an image: replace it (download it again)") from err


def _is_tiff(path: Path) -> bool:
    """A TIFF by its name, gzipped or not (GEO deposits gzip every file, 16-bit TIFFs included)."""
    return _stem(path).lower().endswith((".tif", ".tiff", ".btf"))


def _tiff_source(path: Path):
    """What tifffile opens: the file, or a gzipped TIFF's bytes (PIL cannot decode 16-bit RGB)."""
    if path.name.endswith(".gz"):
        with gzip.open(path, "rb") as handle:
            return io.BytesIO(handle.read())
    return path


def _open_image(path: Path) -> Image.Image:
    if path.name.endswith(".gz"):
        with gzip.open(path, "rb") as handle:
            return Image.open(io.BytesIO(handle.read()))
    return Image.open(path)


def read_image(path: PathLike) -> np.ndarray:
    """Read an image file (PNG/JPEG/TIFF, optionally gzipped) as an RGB ``uint8`` array.

    Raises
    ------
    ReaderError
        The file is missing or cannot be decoded.
    """
    path = Path(path)
    if not path.is_file():
        raise ReaderError(f"image {path} not found: put the slide's image there, or point the "
                          "layout in data/datasets.yml at the right file")
    try:
        if _is_tiff(path):
            import tifffile

            return as_rgb_uint8(tifffile.imread(_tiff_source(path)), path)
        with _no_pixel_limit(), _open_image(path) as im:
            im.load()
            return as_rgb_uint8(np.asarray(im.convert("RGB") if im.mode not in ("RGB", "I;16") else im), path)
    except ReaderError:
        raise
    except Exception as err:  # noqa: BLE001
        raise ReaderError(f"{path}: cannot read the image ({type(err).__name__}: {err}); the file is "
                          "corrupt or truncated: replace it (download it again)") from err


def _scaled_size(width: int, height: int, scale: float) -> tuple[int, int]:
    return max(1, round(width * scale)), max(1, round(height * scale))


def _resize_to(image: np.ndarray, width: int, height: int, scale: float) -> np.ndarray:
    """Resize ``image`` to ``scale`` × the (width, height) of the full-resolution image."""
    size = _scaled_size(width, height, scale)
    if image.shape[1::-1] == size:
        return image
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))


def read_image_scaled(path: PathLike, scale: float) -> np.ndarray:
    """Read an image downscaled by ``scale`` without decoding it at full size when avoidable.

    JPEGs are decoded directly at a reduced size (``PIL.Image.draft``), then resized to exactly
    ``scale`` × the original size, so scale factors stay exact.
    """
    path = Path(path)
    if scale >= 1.0 or not _stem(path).lower().endswith((".jpg", ".jpeg")) or path.name.endswith(".gz"):
        image = read_image(path)
        h, w = image.shape[:2]
        return _resize_to(image, w, h, scale)
    try:
        with _no_pixel_limit(), Image.open(path) as im:
            width, height = im.size
            im.draft("RGB", _scaled_size(width, height, scale))
            small = im.convert("RGB").resize(_scaled_size(width, height, scale), Image.Resampling.LANCZOS)
            return np.asarray(small)
    except Exception as err:  # noqa: BLE001
        raise ReaderError(f"{path}: cannot read the image ({type(err).__name__}: {err}); the file is "
                          "corrupt or truncated: replace it (download it again)") from err


def _want_fullres(load_fullres: bool | str, path: Path) -> bool:
    if load_fullres == "auto":
        w, h = image_size(path)
        return w * h <= FULLRES_AUTO_MAX_PIXELS
    return bool(load_fullres)
