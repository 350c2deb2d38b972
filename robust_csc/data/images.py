"""Reading one image file from a user's folder: a bad file is one RobustCSCError, never a hang or a crash.

PIL decodes whatever a file claims: a 30 kB PNG can claim 100,000 x 100,000
pixels (a decompression bomb: 30 GB once decoded), and PIL only warns up to
twice its MAX_IMAGE_PIXELS; a FIFO named x.JPEG blocks open() forever; a
truncated JPEG fails in the decoder. All of these are refused here, with
the file named, before any large allocation.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from PIL import Image

from robust_csc.errors import RobustCSCError
from robust_csc.validation import file_kind


def _clause(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text.rstrip(".").replace(". ", "; ")


def read_rgb(path: str | Path, what: str = "image", fix: str = "replace it with the published file") -> Image.Image:
    """The image at path as RGB, decoded only after its header passed PIL's pixel limit."""
    path = Path(path)
    kind = file_kind(path)
    if kind != "file":
        raise RobustCSCError(f"{what} {path} is a {kind}, not an image file; {fix}")
    try:
        with warnings.catch_warnings():
            # PIL warns (and goes on decoding) above MAX_IMAGE_PIXELS; here that is an error too.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                return image.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise RobustCSCError(
            f"{what} {path} claims more than {Image.MAX_IMAGE_PIXELS:,} pixels (a decompression bomb); {fix}"
        ) from None
    except MemoryError:
        raise RobustCSCError(f"{what} {path} is too large to decode; {fix}") from None
    except Exception as exc:  # OSError (truncated), UnidentifiedImageError, SyntaxError, ValueError, ... of a bad file
        raise RobustCSCError(f"could not read {what} {path} ({_clause(exc)}); {fix}") from None


def read_rgb_file(path: str) -> Image.Image:
    """read_rgb for torchvision's ImageFolder(loader=...): a module-level function, so workers can pickle it."""
    return read_rgb(path)


__all__ = ["read_rgb", "read_rgb_file"]
