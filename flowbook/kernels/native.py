"""Compiled CPU kernels: C sources in ``flowbook/kernels/csrc``, built on first use and loaded with ctypes.

Why C, and why this way. The amortized planar chain of §4.2 does a few thousand multiply-adds per
layer; as tensor operations its cost on a CPU is the overhead of some ten operations per layer,
forward and backward (see :mod:`flowbook.kernels.fused`). One C loop over examples and layers removes that
overhead. ctypes and the system's C compiler need no build step at install time and no PyTorch
headers (an extension built against them takes a minute to compile; this takes about a second).

A kernel is compiled once per source text, precision, compiler flags and CPU model, into the cache
directory (``$FLOWBOOK_CACHE``, else ``$XDG_CACHE_HOME/flowbook``, else ``~/.cache/flowbook``). Where
no C compiler is found (or ``FLOWBOOK_NATIVE=0`` is set) :func:`load` returns ``None`` and callers
use their PyTorch path, which computes the same thing; :func:`status` says which is in use and why.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

__all__ = ["load", "status", "cache_dir"]

SOURCE_DIR = Path(__file__).parent / "csrc"
# -fopenmp-simd honours the `omp simd` reductions (vectorized dot products) without linking an OpenMP
# runtime; -march=native is tried first and dropped if the compiler rejects it.
BASE_FLAGS = ["-O3", "-std=c11", "-fPIC", "-shared", "-fopenmp-simd"]
NATIVE_FLAG = "-march=native"
REALS = {"float32": "float", "float64": "double"}

# the argument types of each kernel in csrc/planar_chain.c (i: int64, p: pointer)
SIGNATURES = {
    "planar_chain": {
        "planar_dots": "ii" + "p" * 4,
        "planar_forward": "iii" + "p" * 8,
        "planar_backward": "iii" + "p" * 13,
        "planar_finish": "ii" + "p" * 6,
    },
}

_failures: dict[tuple[str, str], str] = {}


def cache_dir() -> Path:
    """Where compiled kernels are kept."""
    if os.environ.get("FLOWBOOK_CACHE"):
        return Path(os.environ["FLOWBOOK_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "flowbook"


def _compiler() -> str | None:
    for candidate in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


def _cpu_model() -> str:
    """The CPU's identity, part of the cache key: a library built with -march=native for one CPU can
    crash on another (e.g. a home directory shared between machines)."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [line for line in f if line.startswith(("model name", "flags", "Features"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor() + platform.machine()


def _build(name: str, real: str, cc: str) -> Path:
    source = (SOURCE_DIR / f"{name}.c").read_bytes()
    key = hashlib.sha256(b"\0".join([source, real.encode(), cc.encode(), " ".join(BASE_FLAGS).encode(),
                                     _cpu_model().encode()])).hexdigest()[:16]
    target = cache_dir() / f"{name}_{real}_{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for extra in ([NATIVE_FLAG], []):
        # compile to a temporary name, then rename: concurrent processes never load a half-written file
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
        cmd = [cc, *BASE_FLAGS, *extra, f"-DREAL={real}", str(SOURCE_DIR / f"{name}.c"), "-o", tmp, "-lm"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode == 0:
            os.replace(tmp, target)
            return target
        os.unlink(tmp)
        errors.append(f"$ {' '.join(cmd)}\n{done.stderr.strip()}")
    raise RuntimeError("\n".join(errors))


@functools.cache
def load(name: str, dtype: str) -> ctypes.CDLL | None:
    """The compiled kernel ``csrc/<name>.c`` for ``dtype`` ('float32' or 'float64'), or None when it
    cannot be had here (no compiler, a failed build, or FLOWBOOK_NATIVE=0); see :func:`status`."""
    if os.environ.get("FLOWBOOK_NATIVE", "1") == "0":
        _failures[name, dtype] = "disabled by FLOWBOOK_NATIVE=0"
        return None
    cc = _compiler()
    if cc is None:
        _failures[name, dtype] = "no C compiler found (set CC, or install gcc or clang)"
        return None
    try:
        path = _build(name, REALS[dtype], cc)
        try:
            lib = ctypes.CDLL(str(path))
        except OSError:  # a damaged cached library (e.g. a disk that filled up): build it once more
            path.unlink(missing_ok=True)
            lib = ctypes.CDLL(str(_build(name, REALS[dtype], cc)))
    except (OSError, RuntimeError) as error:
        _failures[name, dtype] = f"the build failed:\n{error}"
        return None
    types = {"i": ctypes.c_int64, "p": ctypes.c_void_p}
    for function, signature in SIGNATURES[name].items():
        getattr(lib, function).argtypes = [types[c] for c in signature]
        getattr(lib, function).restype = None
    return lib


def status(name: str = "planar_chain", dtype: str = "float32") -> str:
    """One line: whether the compiled kernel is in use, and if not, why."""
    lib = load(name, dtype)
    if lib is not None:
        return f"{name} ({dtype}): compiled kernel {lib._name}"
    return f"{name} ({dtype}): PyTorch fallback, because {_failures[name, dtype]}"
