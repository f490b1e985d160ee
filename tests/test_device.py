"""Device and autocast choice: --amp auto uses bf16 on a CPU only where the CPU computes bf16 natively."""

import pytest
import torch

from efficientdet.utils import device as device_module
from efficientdet.utils.device import DeviceError, amp_mode, cpu_has_native_bf16, x86_cpu_without_vnni

CPU = torch.device("cpu")


@pytest.fixture
def cpuinfo(tmp_path, monkeypatch):
    """Point the flag reader at a fake /proc/cpuinfo with the given flags."""

    def fake(flags: str) -> None:
        path = tmp_path / "cpuinfo"
        path.write_text(f"processor\t: 0\nmodel name\t: test\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
        real_open = open
        monkeypatch.setattr(device_module, "open", lambda p, *a, **k: real_open(path if p == "/proc/cpuinfo" else p,
                                                                              *a, **k), raising=False)  # fmt: skip
        cpu_has_native_bf16.cache_clear()
        x86_cpu_without_vnni.cache_clear()

    yield fake
    cpu_has_native_bf16.cache_clear()
    x86_cpu_without_vnni.cache_clear()


@pytest.mark.parametrize(
    "flags, expected",
    [("fpu sse avx2 fma", (False, torch.float32)),
     ("fpu avx2 avx512f avx512bw", (False, torch.float32)),  # AVX-512 without BF16: emulated, slower
     ("fpu avx512f avx512_bf16", (True, torch.bfloat16)),
     ("fpu amx_tile amx_bf16", (True, torch.bfloat16))],
)  # fmt: skip
def test_auto_uses_bf16_only_on_cpus_that_compute_it(cpuinfo, flags, expected):
    cpuinfo(flags)
    assert amp_mode("auto", CPU) == expected


def test_explicit_choices_do_not_depend_on_the_cpu(cpuinfo):
    cpuinfo("fpu avx2")
    assert amp_mode("bf16", CPU) == (True, torch.bfloat16)
    assert amp_mode("off", CPU) == (False, torch.float32)
    with pytest.raises(DeviceError, match="needs a CUDA device"):
        amp_mode("fp16", CPU)
    with pytest.raises(DeviceError, match="must be auto"):
        amp_mode("fp8", CPU)


@pytest.mark.parametrize(
    "flags, lacks",
    [("fpu sse avx2 fma", True),  # the AVX2-only EPYC this project measured on
     ("fpu avx2 avx512f avx512_vnni", False),
     ("fpu avx2 avx_vnni", False),
     ("fpu avx2 amx_int8 amx_tile", False),
     ("", False)],  # no flags line (ARM's cpuinfo lists "Features"): nothing known
)  # fmt: skip
def test_cpus_without_vnni_are_recognised(cpuinfo, flags, lacks):
    cpuinfo(flags)
    assert x86_cpu_without_vnni() is lacks


def test_an_unreadable_cpuinfo_means_fp32(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("no /proc here")

    monkeypatch.setattr(device_module, "open", refuse, raising=False)
    cpu_has_native_bf16.cache_clear()
    x86_cpu_without_vnni.cache_clear()
    try:
        assert amp_mode("auto", CPU) == (False, torch.float32)
        assert not x86_cpu_without_vnni()  # unknown: no warning
    finally:
        cpu_has_native_bf16.cache_clear()
        x86_cpu_without_vnni.cache_clear()
