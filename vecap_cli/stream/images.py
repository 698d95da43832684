"""The one way vecap reads and decodes an image: bounded, non-blocking, counted.

Every command that opens images (caption, train, eval, and tar output packing a
JSONL record's image) goes through here, so a hostile record is refused the same
way everywhere:

- `read_file` opens only regular files, without blocking (a FIFO, /dev/zero, a
  directory or a socket is refused before a byte is read), and reads at most
  `max_bytes` + 1 bytes;
- `decode` checks the byte cap, then the pixel count from the header *before*
  decoding (a 2 MB PNG can claim 12000² pixels); a JPEG over the cap is decoded
  at 1/2, 1/4 or 1/8 scale (`Image.draft`) when that brings it under.

Each refusal raises `ImageRejected` whose `reason` is the counter name the caller
rejects the sample with. PIL is imported on first decode: `vecap mix --help`
must not pay for it.
"""

from __future__ import annotations

import errno
import io
import os
import stat
from dataclasses import dataclass

# Counter names: what each refusal is counted as.
MISSING = "image-missing"  # no image, or no such file
NOT_FILE = "image-not-file"  # a FIFO, device, directory, socket
TOO_LARGE = "image-too-large"  # over --max-image-bytes
TOO_MANY_PIXELS = "image-too-many-pixels"  # over --max-pixels (after JPEG draft)
UNDECODABLE = "bad-image"  # PIL cannot decode it (the name vecap has always used)


@dataclass(frozen=True, slots=True)
class ImageLimits:
    """Bounds on one image, built from --max-image-bytes and --max-pixels."""

    max_bytes: int = 32_000_000  # 32 MB
    max_pixels: int = 64_000_000  # 64 Mpx: an 8000x8000 photo, 192 MB decoded as RGB


DEFAULT_LIMITS = ImageLimits()


class ImageRejected(Exception):
    """An image vecap will not use; the caller rejects the sample with `reason`."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def read_file(path: str, limits: ImageLimits) -> bytes:
    """The bytes of the regular file `path`, at most `limits.max_bytes` of them.

    O_NONBLOCK makes opening a FIFO return at once (without it, open waits for a
    writer forever); the file type is checked on the open descriptor (fstat), so
    a path swapped between a check and the open cannot slip through.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as err:
        # a socket (ENXIO) or a directory on systems that refuse to open one
        reason = NOT_FILE if err.errno in (errno.ENXIO, errno.EISDIR) else MISSING
        raise ImageRejected(reason, f"cannot read '{path}': {err.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ImageRejected(NOT_FILE, f"'{path}' is {_kind(info.st_mode)}, not a regular file")
        if info.st_size > limits.max_bytes:
            raise ImageRejected(TOO_LARGE, _too_large(path, info.st_size, limits))
        data = _read_upto(fd, limits.max_bytes + 1)
    except OSError as err:
        raise ImageRejected(MISSING, f"cannot read '{path}': {err.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > limits.max_bytes:  # the file grew while we read it
        raise ImageRejected(TOO_LARGE, _too_large(path, len(data), limits))
    return data


def _read_upto(fd: int, n: int) -> bytes:
    chunks, left = [], n
    while left > 0:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a file"


def _too_large(what: str, size: int, limits: ImageLimits) -> str:
    return f"'{what}' has {size:,} bytes or more, over --max-image-bytes {limits.max_bytes:,}"


def check_size(data: bytes, limits: ImageLimits, what: str = "image") -> bytes:
    """`data` when within the byte cap (images that came as tar members)."""
    if len(data) > limits.max_bytes:
        raise ImageRejected(TOO_LARGE, _too_large(what, len(data), limits))
    return data


_pil = None


def _image_module():
    """PIL.Image, imported on first use. PIL's own bomb warning is silenced once:
    `decode` checks pixels against our (lower) cap before any pixel is decoded, and
    `warnings.catch_warnings` is not thread-safe (decoding runs in threads)."""
    global _pil
    if _pil is None:
        import warnings

        from PIL import Image

        warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
        _pil = Image
    return _pil


def open_checked(data: bytes, limits: ImageLimits):
    """(image, scaled): the opened PIL image (header read, nothing decoded) within
    both caps; `scaled` when it is a JPEG over the pixel cap, set to decode at the
    largest DCT scale that fits (its `size` is then the reduced one)."""
    Image = _image_module()
    check_size(data, limits)
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as err:  # over twice PIL's cap: never opened
        raise ImageRejected(TOO_MANY_PIXELS, str(err)) from None
    except Image.UnidentifiedImageError:  # its message names a buffer's address: a new one each run
        raise ImageRejected(
            UNDECODABLE, "UnidentifiedImageError: no image format PIL reads"
        ) from None
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError... for junk
        raise ImageRejected(UNDECODABLE, f"{type(err).__name__}: {err}") from None
    width, height = image.size
    scaled = width * height > limits.max_pixels and image.format == "JPEG"
    if scaled:
        _draft(image, limits.max_pixels)
        width, height = image.size
    if width * height > limits.max_pixels:
        image.close()
        raise ImageRejected(
            TOO_MANY_PIXELS,
            f"{width}x{height} = {width * height:,} pixels, over --max-pixels {limits.max_pixels:,}",
        )
    return image, scaled


def _draft(image, max_pixels: int) -> None:
    """Ask the JPEG decoder for its smallest DCT scale (1/2, 1/4, 1/8) under the cap."""
    width, height = image.size
    for scale in (2, 4, 8):
        if (width // scale) * (height // scale) <= max_pixels:
            break
    image.draft("RGB", (-(-width // scale), -(-height // scale)))


def load_checked(data: bytes, limits: ImageLimits):
    """(image, scaled) as `open_checked` gives them, with the pixels decoded now (in
    the caller's worker thread); ImageRejected when the decoder fails."""
    image, scaled = open_checked(data, limits)
    try:
        image.load()
    except Exception as err:  # truncated data, bad chunks, a decoder's odd error
        image.close()
        raise ImageRejected(UNDECODABLE, f"{type(err).__name__}: {err}") from None
    return image, scaled


def decode(data: bytes, limits: ImageLimits):
    """A fully decoded RGB PIL image, or ImageRejected (too large, too many pixels,
    undecodable)."""
    image, _ = load_checked(data, limits)
    with image:
        return image.convert("RGB")
