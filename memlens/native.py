"""Compiled CPU kernels: build a C++ source once per machine, cache it on disk, load it.

A kernel is a plain C++ source exporting ``extern "C"`` functions that take raw pointers (no
Python or torch headers, so it compiles in about a second); it is loaded with :mod:`ctypes`.
Toy models ship their kernels as ``.cpp`` package data beside their code (``toy_models/kernels/``)
and call :func:`load_kernel`, the one loader: it reads the source, builds it and sets the ctypes
signatures of its functions.

* **Cache.** The shared library is written to ``$MEMLENS_CACHE_DIR`` (default
  ``~/.cache/memlens/native``), named by a hash of the source, the compiler and its flags and the
  CPU (``-march=native`` code must not run on another CPU), so a second process, or a second run,
  loads it without compiling. Concurrent builders each write a temporary file and rename it into
  place atomically.
* **Switch.** ``MEMLENS_COMPILE=0`` turns every compiled or fused path off: memlens then trains
  with plain autograd.
* **Fallback.** Without a working C++ compiler (``$CXX``, else ``c++``/``g++``/``clang++``)
  :func:`load_library` returns ``None``; the caller falls back to eager code. The fallback is
  announced by ONE ``RuntimeWarning`` per process (:func:`warn_fallback`), never once per step.
* **Threads.** Kernels are built with OpenMP where the compiler supports it. Linked against
  ``libgomp.so.1``, they share the OpenMP runtime torch has already loaded; callers pass
  ``torch.get_num_threads()``.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path

__all__ = [
    "COMPILE_ENV",
    "CACHE_ENV",
    "compile_enabled",
    "cache_dir",
    "find_compiler",
    "load_library",
    "load_kernel",
    "warn_fallback",
    "reset_fallback_warning",
]

COMPILE_ENV = "MEMLENS_COMPILE"
CACHE_ENV = "MEMLENS_CACHE_DIR"
BASE_FLAGS = ("-O3", "-std=c++17", "-shared", "-fPIC", "-fno-math-errno")
# Tried in order: the first set that compiles is used (no OpenMP, no -march=native: still correct).
FLAG_SETS = (("-march=native", "-fopenmp"), ("-fopenmp",), ("-march=native",), ())

_lock = threading.Lock()
_libraries: dict[str, ctypes.CDLL | None] = {}
_sources: dict[Path, str] = {}
_warned = False


def compile_enabled() -> bool:
    """False when the user turned compiled and fused paths off with ``MEMLENS_COMPILE=0``."""
    return os.environ.get(COMPILE_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def cache_dir() -> Path:
    """Where built libraries live: ``$MEMLENS_CACHE_DIR`` or ``~/.cache/memlens/native``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "memlens" / "native"


def find_compiler() -> str | None:
    """The C++ compiler to use (``$CXX``, else the first of c++, g++, clang++ on PATH), or None."""
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def warn_fallback(reason: str) -> None:
    """Warn, once per process, that training falls back to slower, uncompiled code."""
    global _warned
    with _lock:
        if _warned:
            return
        _warned = True
    warnings.warn(
        f"memlens: {reason}; training falls back to slower code (the eager autograd step, or "
        "uncompiled torch), which gives the same numbers",
        RuntimeWarning,
        stacklevel=_user_stacklevel(sys._getframe()),
    )


def _user_stacklevel(frame) -> int:
    """The ``warnings.warn`` stacklevel, counted from ``frame`` (the function that warns), of the
    first caller outside memlens and the packages of its plugins."""
    from memlens.plugins import entry_point_packages

    # memlens, the runtime checkers' wrapper frames, and the packages of installed plugins (read
    # off their entry points, without loading any plugin)
    internal = {"memlens", "jaxtyping", "beartype"} | entry_point_packages()
    internal.discard("__main__")  # a plugin defined in the user's own script
    level = 1
    while frame is not None and frame.f_globals.get("__name__", "").split(".")[0] in internal:
        frame, level = frame.f_back, level + 1
    return level


def reset_fallback_warning() -> None:
    """Let :func:`warn_fallback` warn again (for tests)."""
    global _warned
    with _lock:
        _warned = False


def _cpu_id() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            lines = [ln for ln in fh if ln.startswith(("model name", "flags", "Features"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return f"{platform.machine()} {platform.processor()}"


def _compiler_version(cxx: str) -> str:
    try:
        out = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30)
        return out.stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def _build(cxx: str, source: str, target: Path) -> str | None:
    """Compile ``source`` to ``target``; return None on success, else the last compiler error."""
    target.parent.mkdir(parents=True, exist_ok=True)
    err = "no flag set tried"
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".build-") as tmp:
        src = Path(tmp) / "kernel.cpp"
        src.write_text(source)
        out = Path(tmp) / target.name
        for extra in FLAG_SETS:
            cmd = [cxx, *BASE_FLAGS, *extra, str(src), "-o", str(out)]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            except (OSError, subprocess.SubprocessError) as exc:
                err = str(exc)
                continue
            if proc.returncode == 0:
                os.replace(out, target)  # atomic: a concurrent builder wrote the same bytes
                return None
            err = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"
    return err


def load_library(name: str, source: str) -> ctypes.CDLL | None:
    """Build (once per machine, cached on disk) and load a C++ kernel source.

    Returns the loaded library, or None (after :func:`warn_fallback`) when compiling is switched
    off (``MEMLENS_COMPILE=0``), no compiler is found, or the build fails. The result is also
    cached in memory, so later calls cost a dict lookup.
    """
    if not compile_enabled():
        warn_fallback(f"{COMPILE_ENV}=0 switches compiled kernels off")
        return None
    key = f"{name}\0{source}"
    with _lock:
        if key in _libraries:
            lib = _libraries[key]
            if lib is None:
                return None
            return lib
    lib, reason = _load_uncached(name, source)
    with _lock:
        _libraries[key] = lib
    if lib is None:
        warn_fallback(reason)
    return lib


def _load_uncached(name: str, source: str) -> tuple[ctypes.CDLL | None, str]:
    cxx = find_compiler()
    if cxx is None:
        return None, "no C++ compiler found (set $CXX) for the fused training kernels"
    digest = hashlib.sha256(
        "\0".join(
            [source, cxx, _compiler_version(cxx), repr(BASE_FLAGS), repr(FLAG_SETS), _cpu_id()]
        ).encode()
    ).hexdigest()[:20]
    target = cache_dir() / f"{name}-{digest}.so"
    if not target.exists():
        try:
            err = _build(cxx, source, target)
        except OSError as exc:  # an unwritable cache directory, a full disk
            err = f"{type(exc).__name__}: {exc}"
        if err is not None:
            return None, f"compiling the {name} kernel failed ({err})"
    try:
        return ctypes.CDLL(str(target)), ""
    except OSError as exc:
        return None, f"loading the {name} kernel failed ({exc})"


def load_kernel(
    name: str, source_file: str | os.PathLike, signatures: dict[str, list]
) -> ctypes.CDLL | None:
    """Build and load the C++ kernel in ``source_file`` (a ``.cpp`` file), and set the ctypes
    argument types of each function in ``signatures`` (``{function: [argtypes]}``; every kernel
    function returns void). Returns None, as :func:`load_library` does, where kernels are off or
    cannot be built; the source is read once per process."""
    path = Path(source_file)
    with _lock:
        source = _sources.get(path)
    if source is None:
        source = path.read_text()
        with _lock:
            _sources[path] = source
    lib = load_library(name, source)
    if lib is not None and not getattr(lib, "_memlens_typed", False):
        for fn_name, args in signatures.items():
            fn = getattr(lib, fn_name)
            fn.argtypes, fn.restype = args, None
        lib._memlens_typed = True
    return lib
