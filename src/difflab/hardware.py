"""What this machine can do: which device to use, whether bf16 runs natively, how many cores.

A default that is fast on one machine can be ruinous on another: bf16 autocast is 2-3x faster
than fp32 on a CPU with native bf16 (AVX-512 BF16 or AMX) and 7-13x *slower* on one without,
where oneDNN emulates it (most laptops and many cloud CPUs). So nothing here assumes a feature:
each is detected, and every answer comes with the reason, to be printed and recorded.

Detection can be overridden for tests and for users who know better:
``DIFFLAB_NATIVE_BF16=0`` (or ``1``) forces the answer for the CPU, and the device availability
checks take their inputs as arguments so the selection logic runs without the hardware.
"""

from __future__ import annotations

import os
import platform
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

NATIVE_BF16_ENV = "DIFFLAB_NATIVE_BF16"
# CPU flags worth naming next to a speed figure: what decides fp32 / bf16 kernel speed.
SPEED_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "neon", "asimd")


@dataclass(frozen=True)
class DeviceChoice:
    device: torch.device
    why: str


def pick_device(
    requested: str | None = None,
    *,
    cuda_available: bool | None = None,
    mps_available: bool | None = None,
) -> DeviceChoice:
    """CUDA, then Apple's MPS, then the CPU; a requested device must exist.

    The availability flags default to what torch reports; tests pass them to exercise every
    branch on a machine that has none of the accelerators.
    """
    cuda = torch.cuda.is_available() if cuda_available is None else cuda_available
    if mps_available is None:
        mps_backend = getattr(torch.backends, "mps", None)
        mps_available = bool(mps_backend and mps_backend.is_available())
    if requested is not None:
        try:
            dev = torch.device(requested)
        except RuntimeError:
            raise ValueError(
                f"--device {requested!r} is not a device; use cpu, cuda, cuda:N or mps"
            ) from None
        if dev.type == "cuda" and not cuda:
            raise ValueError(f"--device {requested}: this machine has no CUDA GPU; use cpu")
        if dev.type == "mps" and not mps_available:
            raise ValueError(f"--device {requested}: this machine has no Apple MPS; use cpu")
        if dev.type not in ("cpu", "cuda", "mps"):
            raise ValueError(f"--device {requested}: difflab runs on cpu, cuda or mps")
        return DeviceChoice(dev, "as requested")
    if cuda:
        return DeviceChoice(torch.device("cuda"), "a CUDA GPU is available")
    if mps_available:
        return DeviceChoice(torch.device("mps"), "Apple's MPS is available and there is no CUDA")
    return DeviceChoice(torch.device("cpu"), "no CUDA or MPS device")


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_name() -> str:
    info = _cpuinfo()
    return info.get("model name") or platform.processor() or platform.machine() or "unknown CPU"


def cpu_flags() -> list[str]:
    """The speed-relevant instruction-set flags this CPU reports (SPEED_FLAGS order)."""
    info = _cpuinfo()
    have = set((info.get("flags") or info.get("Features") or "").split())
    return [f for f in SPEED_FLAGS if f in have]


def cpu_cores() -> int:
    """Cores this process may run on (the affinity mask, not the whole machine)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def physical_cores(topology: str | os.PathLike = "/sys/devices/system/cpu") -> int:
    """Physical cores under this process's affinity mask: hyperthreads of one core count once.
    A laptop's 8 logical CPUs are often 4 cores, and 8 threads of one convolution then share
    4 cores' vector units. Read from Linux's topology files; elsewhere, every CPU counts."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return cpu_cores()
    cores = set()
    for cpu in cpus:
        base = Path(topology) / f"cpu{cpu}" / "topology"
        try:
            cores.add(((base / "physical_package_id").read_text().strip(),
                       (base / "core_id").read_text().strip()))
        except OSError:
            return cpu_cores()
    return max(1, len(cores))


def describe_cpu() -> str:
    """'AMD EPYC, 2 cores, flags avx2 fma avx512f avx512_bf16': the line next to a figure."""
    flags = " ".join(cpu_flags()) or "none of " + "/".join(SPEED_FLAGS[:4])
    cores = cpu_cores()
    return f"{cpu_name()}, {cores} core{'' if cores == 1 else 's'}, flags {flags}"


def cpu_native_bf16() -> tuple[bool, str]:
    """Whether bf16 matmuls and convolutions run natively on this CPU, and why we think so.

    oneDNN, which runs PyTorch's CPU bf16 kernels, knows best: it answers False on a CPU
    without AVX-512 BF16 / AMX, and also where ONEDNN_MAX_CPU_ISA caps it below them.
    """
    forced = os.environ.get(NATIVE_BF16_ENV)
    if forced is not None:
        if forced not in ("0", "1"):
            raise ValueError(f"{NATIVE_BF16_ENV}={forced!r}: set it to 0 or 1, or unset it")
        if forced == "1":
            return True, f"native bf16 ({NATIVE_BF16_ENV}=1 says so)"
        return False, f"no native bf16 ({NATIVE_BF16_ENV}=0 says so)"
    try:
        native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        native = False
    flags = [f for f in cpu_flags() if "bf16" in f]
    if native:
        return True, f"oneDNN reports native bf16 ({', '.join(flags) or 'bf16 instructions'})"
    return False, "this CPU has no native bf16 (oneDNN would emulate it, 7-13x slower)"


def native_bf16(device: torch.device) -> tuple[bool, str]:
    """Whether bf16 autocast is native on `device` (CUDA: compute capability 8.0+)."""
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return True, f"{torch.cuda.get_device_name(device)} has native bf16"
        return False, f"{torch.cuda.get_device_name(device)} has no native bf16"
    if device.type == "mps":
        return False, "bf16 autocast on MPS is not relied on"
    return cpu_native_bf16()


def cpp_compiler() -> str | None:
    """The C++ compiler torch.compile's CPU backend (inductor) would build its kernels with:
    $CXX, else clang++ on macOS and g++ elsewhere, as inductor picks it; None when that is not
    installed (most Windows and many slim Linux machines), where compiling cannot work."""
    name = os.environ.get("CXX") or ("clang++" if platform.system() == "Darwin" else "g++")
    return shutil.which(name)
