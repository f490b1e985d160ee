"""Shared test fixtures: the real data beside the repository (``../shared``) and small helpers."""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EFFICIENTDET_SHARED", REPO.parent / "shared"))
PARITY_DIR = SHARED / "fixtures" / "effdet_parity"

# (fixture file, our model name, padding flavour the loader must infer, redundant bias)
PARITY_CASES = [
    ("tf_efficientdet_d0_256.pt", "efficientdet-d0", "same", True),
    ("efficientdet_d0_128.pt", "efficientdet-d0", "symmetric", False),
    ("tf_efficientdet_lite0_128.pt", "efficientdet-lite0", "same", True),
]


def require_shared(path: Path) -> Path:
    """The shared data must exist in CI; elsewhere its absence skips the test with the reason."""
    if not path.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{path} is missing: CI must have ../shared beside the repository")
        pytest.skip(f"{path} not found (set EFFICIENTDET_SHARED to the shared/ folder)")
    return path


def tiny_detector_checkpoint(path: Path, class_names: list[str]) -> Path:
    """A tiny random Lite0 (128 px) saved at ``path``, with a wide spread of scores: tens of boxes per image above 0.3.

    At initialisation every score is close to the 0.01 prior; scaling the class logits' weights and raising their
    bias gives boxes to draw, filter and suppress.
    """
    from efficientdet.models.factory import create_model, save_model

    torch.manual_seed(0)
    model = create_model("efficientdet-lite0", num_classes=len(class_names), image_size=128)
    with torch.no_grad():
        model.class_net.predict.pointwise.weight.mul_(8.0)
        model.class_net.predict.pointwise.bias.fill_(-7.0)
    save_model(model, path, class_names=class_names)
    return path


def spy_decodes(monkeypatch, module) -> list[int]:
    """The reduction factor of every ``decode_image`` call that ``module`` makes from now on (1: decoded in full):
    ``module``'s name for it is replaced by a wrapper that records and passes the call on."""
    from efficientdet.data.images import decode_image

    reductions: list[int] = []

    def spy(*args, **kwargs):
        decoded = decode_image(*args, **kwargs)
        reductions.append(decoded.reduction)
        return decoded

    monkeypatch.setattr(module, "decode_image", spy)
    return reductions


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a module of many tiny tensors: thread hand-offs cost more than the work (on a busy
    2-core machine two threads were 5-10x slower); the previous count is restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def parity_data() -> dict[str, dict]:
    """The effdet reference outputs, keyed by file name (loaded once)."""
    require_shared(PARITY_DIR)
    return {name: torch.load(PARITY_DIR / name, weights_only=True) for name, *_ in PARITY_CASES}


def interrupt_at_call(monkeypatch, owner: object, name: str, n: int) -> None:
    """Make ``owner.name`` raise KeyboardInterrupt (what Ctrl-C raises) at its ``n``-th call; the calls before run
    as usual."""
    real = getattr(owner, name)
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, interrupted)


class _QuietFileHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep the test output clean
        pass


@contextlib.contextmanager
def serve_folder(folder: Path) -> Iterator[str]:
    """``http://127.0.0.1:PORT``: the files of ``folder`` on a loopback HTTP server for the block (tests never
    contact an outside host)."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietFileHandler, directory=folder))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
