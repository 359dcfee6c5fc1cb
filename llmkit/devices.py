"""What hardware is here, and what that means for training: device, precision, 4-bit.

The rules (the default when a recipe says `precision: auto`):
  * CUDA: bf16 where the GPU supports it (Ampere and newer), else fp16. QLoRA (4-bit) needs
    CUDA and bitsandbytes.
  * Apple MPS: fp32 (mixed precision on MPS is not reliable across macOS/torch versions).
  * CPU: bf16 only where the CPU has native bf16 matrix instructions (AMX-BF16 or
    AVX512-BF16); there bf16 matmuls run several times faster than fp32. Elsewhere bf16 is
    emulated and much slower than fp32 (measured ~100x on an AVX2-only EPYC), so fp32.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import platform
from dataclasses import asdict, dataclass
from functools import lru_cache

from llmkit.errors import HardwareError


@dataclass
class Hardware:
    device: str  # cuda | mps | cpu
    name: str  # GPU name or CPU model
    count: int  # GPUs (1 for cpu/mps)
    bf16: bool  # native bf16 matrix math
    precision: str  # the automatic choice: bf16 | fp16 | fp32
    four_bit: bool  # QLoRA possible (CUDA + bitsandbytes)
    cpu_isa: str  # e.g. AVX512, AVX2 (what torch's CPU kernels use)
    cpu_bf16: str  # which bf16 instructions the CPU has: amx_bf16, avx512_bf16 or none


def cpu_flags() -> frozenset[str]:
    """CPU feature flags (Linux /proc/cpuinfo; empty elsewhere), less those that oneDNN's
    ONEDNN_MAX_CPU_ISA keeps torch's and OpenVINO's kernels from using."""
    return _cpu_flags() - isa_excluded_flags()


@lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str]:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:  # no /proc: not Linux
        for line in fh:
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    return frozenset()


# oneDNN's ISA levels, lowest first, with the x86 flags each one adds. ONEDNN_MAX_CPU_ISA=AVX2
# makes an AVX-512/AMX machine compute like an AVX2 one (how we measure "an AVX2 CPU" on one).
_ISA_LEVELS = (
    ("SSE41", ()),
    ("AVX", ()),
    ("AVX2", ("avx2", "fma")),
    ("AVX2_VNNI", ("avx_vnni",)),
    ("AVX2_VNNI_2", ()),
    ("AVX512_CORE", ("avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl")),
    ("AVX512_CORE_VNNI", ("avx512_vnni",)),
    ("AVX512_CORE_BF16", ("avx512_bf16",)),
    ("AVX512_CORE_FP16", ("avx512_fp16",)),
    ("AVX512_CORE_AMX", ("amx_tile", "amx_bf16", "amx_int8")),
    ("AVX512_CORE_AMX_FP16", ("amx_fp16",)),
)


def isa_limit() -> str | None:
    """ONEDNN_MAX_CPU_ISA when it names a level below everything (ALL/DEFAULT/unset: None)."""
    value = os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper()
    return value if value in dict(_ISA_LEVELS) else None


def isa_excluded_flags() -> frozenset[str]:
    limit = isa_limit()
    if limit is None:
        return frozenset()
    names = [name for name, _ in _ISA_LEVELS]
    above = {f for _, flags in _ISA_LEVELS[names.index(limit) + 1 :] for f in flags}
    if not limit.startswith("AVX512"):  # below AVX-512: none of its many extension flags
        above |= {f for f in _cpu_flags() if f.startswith(("avx512", "amx"))}
    return frozenset(above)


def cpu_bf16_kind() -> str:
    flags = cpu_flags()
    for flag in ("amx_bf16", "avx512_bf16"):
        if flag in flags:
            return flag
    return "none"


def cpu_native_bf16() -> bool:
    """bf16 math is only fast with AMX-BF16 or AVX512-BF16; elsewhere it is emulated and slower."""
    return cpu_bf16_kind() != "none"


# The flags that decide which math kernels run fast (int8 VNNI, bf16, AMX; NEON/SVE on Arm).
KERNEL_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "asimd",
    "sve",
)


def cpu_kernel_flags() -> list[str]:
    """Which of KERNEL_FLAGS this CPU has, in that order."""
    flags = cpu_flags()
    return [f for f in KERNEL_FLAGS if f in flags]


def cpu_signature() -> str:
    """CPU model + machine + kernel flags: a key for choices measured on this CPU."""
    limit = f" | ONEDNN_MAX_CPU_ISA={isa_limit()}" if isa_limit() else ""
    return f"{cpu_name()} | {platform.machine()} | {' '.join(cpu_kernel_flags()) or 'no-flags'}{limit}"


def cpu_name() -> str:
    return _cpu_name()


def _cpu_name() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:  # no /proc: not Linux
        for line in fh:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


@lru_cache(maxsize=1)
def accelerator() -> str | None:
    """The GPU torch can use here: "cuda", "mps", or None. Without a GPU driver (NVIDIA, ROCm) or
    Apple silicon, None at once: importing torch to ask would cost every CPU-only command ~2 s."""
    apple = platform.system() == "Darwin" and platform.machine() == "arm64"
    if not (apple or os.path.exists("/proc/driver/nvidia") or os.path.exists("/dev/kfd")):
        return None
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return None


def accelerator_name() -> str | None:
    """The GPU's model (a key for choices measured on it), or None without one."""
    kind = accelerator()
    if kind == "cuda":
        import torch

        return torch.cuda.get_device_name(0)
    return "Apple MPS" if kind == "mps" else None


@lru_cache(maxsize=1)
def detect() -> Hardware:
    import torch

    try:
        isa = torch.backends.cpu.get_cpu_capability()
    except Exception:
        isa = "unknown"
    cpu_bf16 = cpu_bf16_kind()
    if torch.cuda.is_available():
        bf16 = torch.cuda.is_bf16_supported()
        return Hardware(
            device="cuda",
            name=torch.cuda.get_device_name(0),
            count=torch.cuda.device_count(),
            bf16=bf16,
            precision="bf16" if bf16 else "fp16",
            four_bit=importlib.util.find_spec("bitsandbytes") is not None,
            cpu_isa=isa,
            cpu_bf16=cpu_bf16,
        )
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return Hardware("mps", "Apple MPS", 1, False, "fp32", False, isa, cpu_bf16)
    native = cpu_bf16 != "none"
    return Hardware("cpu", _cpu_name(), 1, native, "bf16" if native else "fp32", False, isa, cpu_bf16)


def choose_precision(requested: str, hw: Hardware | None = None) -> str:
    """The precision to train in: the hardware's choice for `auto`, else the request, checked."""
    hw = hw or detect()
    if requested == "auto":
        return hw.precision
    if requested == "fp16" and hw.device == "cpu":
        raise HardwareError(
            "train.precision: fp16 training is not supported on CPU",
            "use train.precision=fp32 (or bf16 on CPUs with AMX/AVX512-BF16)",
        )
    if requested == "bf16" and not hw.bf16:
        from llmkit.ui import warn

        warn(f"bf16 requested but {hw.name} has no native bf16 math: expect it to run much slower than fp32")
    return requested


def check_4bit(hw: Hardware | None = None) -> None:
    """Raise a clear error unless QLoRA (4-bit bitsandbytes) can run here."""
    hw = hw or detect()
    if hw.device != "cuda":
        raise HardwareError(
            f"model.load_in_4bit: QLoRA needs a CUDA GPU with bitsandbytes; this machine has {hw.device.upper()} only",
            "set model.load_in_4bit=false to train plain LoRA (a 1B model in fp32 needs ~4 GB + activations)",
        )
    if not hw.four_bit:
        raise HardwareError(
            "model.load_in_4bit: QLoRA needs the bitsandbytes package, which is not installed",
            "pip install 'llmkit[qlora]'  (or: pip install bitsandbytes)",
        )


def describe() -> dict:
    """A flat summary for `llmkit doctor`."""
    hw = detect()
    out = asdict(hw)
    out["train_precision"] = out.pop("precision")
    out["qlora"] = out.pop("four_bit")
    return out


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity set (taskset, cgroups cpusets), not the
    machine's count. Every thread pool (torch, ONNX Runtime, OpenVINO) is sized from this."""
    import os

    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def free_cpus(sample: float = 0.1) -> int:
    """CPUs of our affinity set not busy with other processes right now (at least 1).

    torch's OpenMP threads spin at every barrier: with a thread per core and one core taken by
    another process, each step waits for the descheduled thread (`llmkit chat` went from 9.5 s to
    ~90 s with one of two cores busy). Sizing the pool to the idle cores avoids that collapse.
    """
    import os
    import time

    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))

    def snapshot() -> tuple[int, int]:
        # per-CPU lines of our own affinity set: cores we may not run on do not count as free
        idle = total = 0
        with open("/proc/stat") as fh:
            for line in fh:
                name, *fields = line.split()
                if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
                    values = [int(x) for x in fields]
                    idle += values[3] + values[4]  # idle + iowait
                    total += sum(values)
        return idle, total

    try:
        idle0, total0 = snapshot()
        time.sleep(sample)
        idle1, total1 = snapshot()
    except (OSError, ValueError, IndexError):  # no /proc (macOS): trust the affinity set
        return len(cpus)
    if total1 <= total0:
        return len(cpus)
    idle_cpus = len(cpus) * (idle1 - idle0) / (total1 - total0)
    return max(1, min(len(cpus), round(idle_cpus)))


def use_free_cpus() -> int:
    """Size torch's CPU thread pool to the idle cores, unless the user chose (OMP_NUM_THREADS)."""
    import os

    import torch

    if not os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(free_cpus())
    return torch.get_num_threads()
