"""Freed memory kept in the process: large tensors stop costing page faults once the policy is applied (glibc)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from efficientdet.utils.allocator import on_glibc

pytestmark = pytest.mark.skipif(not on_glibc(), reason="the policy is glibc's")

# Page faults of allocating, filling and freeing a 64 MiB tensor 10 times, before and after the policy (after the
# heap first grew to hold it); each probe runs in a fresh interpreter, whatever this test process's own setting.
PROBE = textwrap.dedent(
    """
    import json, resource, threading
    import torch
    from efficientdet.utils.allocator import freed_memory_retained, retain_freed_memory

    def faults_of_large_tensors():
        start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(10):
            torch.empty(16 * 1024 * 1024).fill_(1.0)  # 64 MiB, freed at once
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start

    faults_of_large_tensors()  # torch's own first-use costs
    before = faults_of_large_tensors()
    applied = retain_freed_memory()
    faults_of_large_tensors()  # the heap grows to hold the block, once
    after = faults_of_large_tensors()
    # a large block from another thread still allocates (glibc falls back to the main arena without mmap)
    sums = []
    worker = threading.Thread(target=lambda: sums.append(float(torch.ones(64 * 1024 * 1024).sum())))
    worker.start(); worker.join()
    print(json.dumps({"before": before, "after": after, "applied": applied, "reported": freed_memory_retained(),
                      "thread_sum": sums[0]}))
    """
)


def untuned_environment(**env: str) -> dict[str, str]:
    """This process's environment without any malloc tuning or opt-out, plus ``env``."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    environment.pop("EFFICIENTDET_RETAIN_MEMORY", None)
    return {**environment, **env}


def run_probe(**env: str) -> dict:
    environment = untuned_environment(**env)
    out = subprocess.run([sys.executable, "-c", PROBE], env=environment, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_large_tensors_stop_faulting_once_freed_memory_is_kept():
    result = run_probe()
    pages = 10 * 64 * 1024 * 1024 // 4096
    assert result["before"] > pages // 2  # glibc's default maps and zero-fills each 64 MiB block again
    assert result["applied"] and result["reported"]
    assert result["after"] < pages // 20  # the freed block is reused: (almost) no new pages
    assert result["thread_sum"] == 64 * 1024 * 1024


@pytest.mark.parametrize(
    "env",
    [
        {"EFFICIENTDET_RETAIN_MEMORY": "0"},
        {"MALLOC_TRIM_THRESHOLD_": "131072"},
        {"GLIBC_TUNABLES": "glibc.malloc.mmap_max=65536"},
    ],
)
def test_opt_out_and_user_tuning_leave_malloc_alone(env):
    result = run_probe(**env)
    pages = 10 * 64 * 1024 * 1024 // 4096
    assert not result["applied"] and not result["reported"]
    assert result["after"] > pages // 2  # still glibc's own behaviour


@pytest.mark.parametrize(("batch", "kept"), [("1", False), ("2", True)])
def test_commands_keep_freed_memory_for_batches_of_several_images(batch, kept):
    """``bench`` (like ``eval`` and ``predict``) applies the policy for batches of several images only: a batch of
    one gained nothing from it (D0 ran ~4% slower)."""
    probe = (
        "import contextlib, io, sys; from efficientdet.cli.main import main; "
        "from efficientdet.utils.allocator import freed_memory_retained; "
        "before = freed_memory_retained(); "
        "with_out = contextlib.redirect_stdout(io.StringIO()); with_out.__enter__(); "
        f"code = main(['bench', '--model', 'efficientdet-lite0', '--img-size', '64', '--batch-size', '{batch}', "
        "'--iterations', '1', '--warmup', '0', '--json']); "
        "print(before, freed_memory_retained(), code, file=sys.stderr)"
    )
    out = subprocess.run([sys.executable, "-c", probe], env=untuned_environment(), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stderr.strip().splitlines()[-1] == f"False {kept} 0"


def test_eval_and_predict_ask_for_it_with_their_batch_size(monkeypatch, tmp_path):
    """``eval`` (batches of 8 by default) and ``predict --batch-size`` pass their batch size to the rule; the call
    is recorded here, leaving this test process's malloc alone."""
    import efficientdet.cli.common as common
    from efficientdet.cli.main import main

    asked = []
    monkeypatch.setattr(common, "retain_freed_memory", lambda: asked.append(1) or True)
    main(["eval", "--checkpoint", str(tmp_path / "none.pt"), "--data", str(tmp_path / "missing")])
    assert asked == [1]
    predict = ["predict", str(tmp_path / "missing.jpg"), "--checkpoint", str(tmp_path / "none.pt"), "--output",
               str(tmp_path / "p")]  # fmt: skip
    main(predict)
    assert asked == [1]  # a batch of one on a CPU: glibc's own malloc
    main([*predict, "--batch-size", "4"])
    assert asked == [1, 1]
