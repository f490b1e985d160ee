"""Images that ``predict`` is given by http(s) URL (``predict https://example.com/bus.jpg``, as other detectors'
predict commands take them): downloaded into a temporary folder and then read like any image file.

A URL whose path names an image file (by extension) is an image; any other http(s) URL stays a network stream
(:mod:`efficientdet.inference.video`), as ``--source URL`` always is. Downloads go through ``urllib`` with a
timeout and a size limit, and the file keeps the URL's own name for the drawn copy and label files.
"""

from __future__ import annotations

import os
import re
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar
from urllib.parse import unquote, urlsplit

from ..data.images import ImageReadError

IMAGE_URL_SCHEMES = ("http", "https")
IMAGE_URL_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
DOWNLOAD_TIMEOUT_S = 30.0  # a server that sends nothing for this long is reported, not waited for
MAX_IMAGE_BYTES = 256 * 1024 * 1024  # far above any photo; a bigger answer is not an image to run on
_CHUNK = 1 << 20
_UNSAFE = re.compile(r"[^\w.\-]+")


class ImageDownloadError(ImageReadError):
    """An image URL that could not be downloaded (an image that cannot be read, like a missing file); the message
    names the URL and why."""


def is_image_url(text: str | os.PathLike) -> bool:
    """Whether ``text`` is an http(s) URL whose path ends in an image extension (``.jpg``, ``.png``, ...)."""
    text = os.fspath(text)
    parts = urlsplit(text)
    return (
        "://" in text
        and parts.scheme.lower() in IMAGE_URL_SCHEMES
        and Path(unquote(parts.path)).suffix.lower() in IMAGE_URL_EXTENSIONS
    )


def url_file_name(url: str) -> str:
    """The image's own file name from ``url`` (``https://host/a/b%20c.jpg?x=1`` -> ``b_c.jpg``), safe on disk."""
    name = Path(unquote(urlsplit(url).path)).name
    return _UNSAFE.sub("_", name).strip("._") or "image"


def download_image(url: str, folder: str | os.PathLike, index: int) -> Path:
    """Download ``url`` to ``folder/<index>/<its file name>`` (the file keeps the URL's name, which outputs named
    after the input's stem then carry); :class:`ImageDownloadError` naming ``url`` on failure (unreachable, an HTTP
    error, a timeout, an answer larger than :data:`MAX_IMAGE_BYTES`), nothing left behind."""
    from .. import __version__

    target = Path(folder) / str(index) / url_file_name(url)
    target.parent.mkdir(parents=True, exist_ok=True)
    request = urllib.request.Request(url, headers={"User-Agent": f"efficientdet/{__version__}"})
    try:
        with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as answer, open(target, "wb") as f:
            size = 0
            while chunk := answer.read(_CHUNK):
                size += len(chunk)
                if size > MAX_IMAGE_BYTES:
                    raise ImageDownloadError(f"{url}: cannot download image (larger than {MAX_IMAGE_BYTES >> 20} MiB)")
                f.write(chunk)
    except ImageDownloadError:
        target.unlink(missing_ok=True)
        raise
    except (urllib.error.URLError, OSError, ValueError) as exc:
        target.unlink(missing_ok=True)
        # "HTTP Error 404: Not Found"; for other failures the underlying reason ("Connection refused", "timed out")
        reason = exc if isinstance(exc, urllib.error.HTTPError) else getattr(exc, "reason", None) or exc
        raise ImageDownloadError(f"{url}: cannot download image ({reason})") from exc
    return target


T = TypeVar("T")


def naming_url(message: str, local: Path, url: str) -> str:
    """``message`` (e.g. a decoding error, which names the file it read) with the downloaded file ``local`` named
    by its ``url``: the user gave the URL and never saw the temporary file."""
    return message.replace(str(local), url)


def read_url_image(url: str, read: Callable[[Path], T]) -> T:
    """``read`` (a decoder taking a path) applied to the image at ``url``, downloaded into a temporary folder that
    is removed afterwards: how the Python API (``Detector("https://.../bus.jpg")``) takes URLs. A decoding error
    names the URL, not the temporary file."""
    with tempfile.TemporaryDirectory(prefix="efficientdet-url-image-") as folder:
        local = download_image(url, folder, 0)
        try:
            return read(local)
        except ImageReadError as exc:
            raise ImageReadError(naming_url(str(exc), local, url)) from exc
