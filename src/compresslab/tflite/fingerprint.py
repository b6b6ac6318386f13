"""The hardware and software a latency was measured on. Absolute latency only compares between runs on the same
fingerprint; across fingerprints, compare the latency ratios measured within each run.

Standard library only (no TensorFlow import: versions are read from the installed packages' metadata).
"""

import os
import platform
from importlib import metadata
from pathlib import Path

# The vector extensions that decide which kernels LiteRT/XNNPACK can use, as /proc/cpuinfo names them.
VECTOR_EXTENSIONS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
                     "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "asimd", "asimddp", "sve", "i8mm")
PACKAGES = ("ai-edge-litert", "tensorflow", "numpy")


def machine_fingerprint() -> dict[str, str]:
    """CPU model, vector extensions, cores, OS and the versions of the packages that run the files."""
    cpu, flags = cpu_info()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    found = {"cpu": cpu or platform.processor() or platform.machine(),
             "vector_extensions": " ".join(name for name in VECTOR_EXTENSIONS if name in flags) or "unknown",
             "cores": str(os.cpu_count()), "usable_cores": str(usable), "machine": platform.machine(),
             "system": f"{platform.system()} {platform.release()}", "python": platform.python_version()}
    for package in PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def cpu_info(path: str | Path = "/proc/cpuinfo") -> tuple[str | None, set[str]]:
    """(model name, set of flags) of the first CPU in /proc/cpuinfo; (None, empty) where there is none."""
    model, flags = None, set()
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return model, flags
    for line in lines:
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "Hardware", "cpu model") and model is None:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    return model, flags
