"""Make MLX fast on Linux by putting an optimized BLAS into the process's global symbol scope.

The Linux ``mlx[cpu]`` wheel links a reference BLAS and takes only ``cblas_sgemm``/``dgemm``/
``cgemm`` from it, which makes fp32 matmul 20-50x slower than an optimized BLAS. The dynamic
linker resolves those symbols from the global scope first, so loading an optimized library with
``RTLD_GLOBAL`` *before* ``mlx.core`` is first imported makes MLX bind to it. Loading it afterwards
changes nothing: the symbols are bound at import. ``phasegpt/__init__.py`` therefore calls
:func:`ensure` before anything imports MLX.

Order tried by :func:`ensure` (the first library that loads and exports ``cblas_sgemm`` wins):

1. ``PHASEGPT_BLAS``: a path to a library (used alone, no fallback), ``none`` to keep MLX's own
   BLAS, or empty/``auto`` for the automatic order below.
2. A ``cblas_sgemm`` already in the global scope (``LD_PRELOAD``, or loaded by the host program).
3. pip ``cmeel-openblas``, only on CPUs with AVX-512 (F/DQ/BW/VL): it is an AVX-512-only build
   that dies of SIGILL elsewhere, and it needs the system's ``libgfortran.so.5``.
4. On Intel CPUs, pip ``mkl`` (x86_64; its ``libiomp5`` is loaded first so MKL finds its
   threading layer), then the system OpenBLAS (Debian/Ubuntu ``libopenblas0-pthread``, Fedora
   ``openblas``, conda). On other CPUs the system OpenBLAS first, then pip ``mkl``: on an AMD
   EPYC it measured ~1.7x faster than MKL.

``OPENBLAS_CORETYPE`` is never set or unset here: some machines pin it because older OpenBLAS
builds compute wrong results on their CPU.
"""

from __future__ import annotations

import ctypes
import glob
import os
import platform
import site
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache

ENV_VAR = "PHASEGPT_BLAS"

# Names of BlasInfo records that mean "MLX matmul goes through an optimized BLAS".
_FAST = frozenset({"custom", "preloaded", "cmeel-openblas", "mkl", "openblas"})

# cmeel-openblas is built for SkylakeX; Knights Landing has avx512f but not bw/dq/vl.
_AVX512_NEEDED = ("avx512f", "avx512dq", "avx512bw", "avx512vl")

_FIX = (
    "Install one (`pip install mkl`, or as root `apt-get install libopenblas0-pthread`), "
    "or point PHASEGPT_BLAS at a library exporting cblas_sgemm, or LD_PRELOAD it."
)


class BlasWarning(RuntimeWarning):
    """MLX will run on its slow reference BLAS; the message says how to fix it."""


@dataclass(frozen=True)
class BlasInfo:
    """What :func:`ensure` chose for this process.

    Attributes:
        name: ``cmeel-openblas``, ``mkl``, ``openblas``, ``custom`` (from ``PHASEGPT_BLAS``),
            ``preloaded`` (already in the global scope), ``stock`` (MLX's own reference BLAS),
            ``accelerate`` (macOS) or ``unchecked`` (``ensure`` has not run).
        path: The library loaded or found, or None.
        reason: One sentence on why this was chosen.
        notes: What was tried and skipped, in order.
    """

    name: str
    path: str | None
    reason: str
    notes: tuple[str, ...] = field(default=())

    @property
    def fast(self) -> bool:
        """True when MLX's fp32 matmul goes through an optimized BLAS (or Accelerate)."""
        return self.name in _FAST or self.name == "accelerate"


_UNCHECKED = BlasInfo("unchecked", None, "phasegpt.blas.ensure() has not run in this process")
_active: BlasInfo | None = None
_warned: set[str] = set()
# ctypes handles must stay alive for the life of the process, or the library could be closed.
_handles: list[ctypes.CDLL] = []


def active() -> BlasInfo:
    """Return the record of what :func:`ensure` chose (``unchecked`` before it has run)."""
    return _active if _active is not None else _UNCHECKED


def ensure() -> BlasInfo:
    """Load an optimized BLAS into the global symbol scope before MLX is imported (Linux only).

    Idempotent and cheap: no MLX import, no subprocess; it only globs a few directories. It never
    raises because a library failed to load; it warns once (:class:`BlasWarning`) instead.

    Returns:
        The :class:`BlasInfo` also returned afterwards by :func:`active`.
    """
    global _active
    if _active is None:
        _active = _choose()
    return _active


def provider() -> str | None:
    """Path of the library whose ``cblas_sgemm`` is in the global scope, or None.

    This is what MLX binds to if ``mlx.core`` is imported now (or was imported after the load).
    """
    try:
        fn = ctypes.CDLL(None).cblas_sgemm
    except AttributeError:
        return None
    return _library_of(fn) or "(unknown library)"


# (getter, setter) of the thread count, by library family; all of them set it process-wide.
_THREAD_CONTROLS = (("openblas_get_num_threads", "openblas_set_num_threads"),
                    ("MKL_Get_Max_Threads", "MKL_Set_Num_Threads"))


_single_lock = threading.Lock()
_single_users = 0  # blocks inside one_thread() right now
_threads_before = 0  # the count to restore when the last of them leaves


@cache
def thread_control() -> tuple[Callable[[], int], Callable[[int], None]] | None:
    """Getter and setter of the thread count of the BLAS MLX's matmul calls, or None if unknown.

    Found in the library that provides ``cblas_sgemm`` (OpenBLAS or MKL). MLX's own reference
    BLAS has no threads, and Accelerate exposes no such setter: both give None. So does an
    OpenMP build of OpenBLAS, where the setting only holds in the thread that makes it.
    """
    path = provider()
    if path is None:
        return None
    try:
        lib = ctypes.CDLL(path) if os.sep in path else ctypes.CDLL(None)
    except OSError:
        return None
    parallel = getattr(lib, "openblas_get_parallel", None)
    if parallel is not None:
        parallel.argtypes, parallel.restype = [], ctypes.c_int
        if parallel() == 2:  # an OpenMP build: the count is per calling thread, MLX's stream threads keep theirs
            return None
    for get_name, set_name in _THREAD_CONTROLS:
        get, set_ = getattr(lib, get_name, None), getattr(lib, set_name, None)
        if get is not None and set_ is not None:
            get.argtypes, get.restype = [], ctypes.c_int
            set_.argtypes, set_.restype = [ctypes.c_int], None
            return get, set_
    return None


def single_threaded_ok() -> bool:
    """True if :func:`one_thread` can really put MLX's matmuls on one thread."""
    return thread_control() is not None or active().name == "stock"


@contextmanager
def one_thread() -> Iterator[None]:
    """Run the block with MLX's BLAS on one thread, then restore the previous count.

    For work that is already parallel (a batch split over several MLX CPU streams, each its own
    thread): a multi-threaded BLAS would put two threads per core. The setting is process-wide
    while the block runs; BLAS calls from other threads in that time also run single-threaded.
    Nested or overlapping blocks (two threads, each classifying with its own Model) share it:
    the first to enter saves the count and the last to leave restores it.
    """
    global _single_users, _threads_before
    control = thread_control()
    if control is None:
        yield
        return
    get, set_ = control
    with _single_lock:  # nested or concurrent blocks: the first in saves the count, the last out restores it
        if _single_users == 0:
            _threads_before = get()
            set_(1)
        _single_users += 1
    try:
        yield
    finally:
        with _single_lock:
            _single_users -= 1
            if _single_users == 0:
                set_(_threads_before)


def cpuinfo(*fields: str) -> str:
    """The value of the first ``/proc/cpuinfo`` line starting with one of ``fields`` ("" if none or unreadable)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith(fields):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def cpu_flags() -> frozenset[str]:
    """The CPU feature flags from ``/proc/cpuinfo`` (empty where it cannot be read)."""
    return frozenset(cpuinfo("flags", "Features").split())


def _choose() -> BlasInfo:
    if sys.platform == "darwin":
        return BlasInfo("accelerate", None, "macOS: MLX uses Accelerate and Metal; nothing to load")
    if not sys.platform.startswith("linux"):
        return BlasInfo("stock", None, f"{sys.platform}: no BLAS loader for this platform")

    setting = os.environ.get(ENV_VAR, "").strip()
    if setting.lower() == "none":
        return BlasInfo("stock", None, f"{ENV_VAR}=none: MLX keeps its own reference BLAS")

    already = provider()
    if already is not None:
        return BlasInfo("preloaded", already, "cblas_sgemm was already in the global scope")

    if "mlx.core" in sys.modules:
        _warn_once(
            "late",
            "mlx.core was imported before phasegpt, so MLX is bound to its slow reference BLAS "
            "(fp32 matmul 20-50x slower). Import phasegpt before mlx, or LD_PRELOAD an optimized "
            "BLAS (e.g. /usr/lib/x86_64-linux-gnu/libopenblas.so.0).",
        )
        return BlasInfo("stock", None, "mlx.core was imported before phasegpt.blas.ensure()")

    if setting and setting.lower() != "auto":
        ok, note = _load([setting])
        if ok:
            return BlasInfo("custom", setting, f"{ENV_VAR} names this library")
        _warn_once(
            "custom",
            f"{ENV_VAR}={setting!r} could not be used ({note}); MLX keeps its slow reference "
            f"BLAS. Point {ENV_VAR} at a library exporting cblas_sgemm, or set it to none.",
        )
        return BlasInfo("stock", None, f"{ENV_VAR} could not be loaded", (note,))

    notes: list[str] = []
    for name, paths, skip in _candidates():
        if skip:
            notes.append(f"{name}: {skip}")
            continue
        ok, note = _load(paths)
        if ok:
            return BlasInfo(name, paths[-1], _REASONS[name], tuple(notes))
        notes.append(f"{name}: {note}")

    _warn_once(
        "none",
        "No optimized BLAS found, so MLX's fp32 matmul runs on its reference BLAS (20-50x "
        f"slower). {_FIX}",
    )
    return BlasInfo("stock", None, "no optimized BLAS found", tuple(notes))


_REASONS = {
    "cmeel-openblas": "pip cmeel-openblas on an AVX-512 CPU (fastest measured)",
    "mkl": "pip mkl in this Python environment (preferred on Intel CPUs)",
    "openblas": "the system OpenBLAS",
}


def _candidates() -> Iterator[tuple[str, list[str], str | None]]:
    """Yield ``(name, paths to load in order, reason to skip or None)``, best first."""
    flags = cpu_flags()
    machine = platform.machine()
    prefixes = _prefixes()

    cmeel = _first(os.path.join(d, "cmeel.prefix", "lib", "libopenblas.so.0") for d in _site_dirs())
    if cmeel:
        missing = [f for f in _AVX512_NEEDED if f not in flags]
        skip = f"CPU lacks {', '.join(missing)} (AVX-512-only build)" if missing else None
        yield "cmeel-openblas", [cmeel], skip

    mkl_entry = None
    if machine in ("x86_64", "AMD64"):
        mkl = _first(_globbed(os.path.join(p, "lib", "libmkl_rt.so.*") for p in prefixes))
        if mkl:
            iomp = os.path.join(os.path.dirname(mkl), "libiomp5.so")
            mkl_entry = ("mkl", [iomp, mkl] if os.path.exists(iomp) else [mkl], None)

    triplet = f"/usr/lib/{machine}-linux-gnu"
    system = _first(
        [
            f"{triplet}/openblas-pthread/libopenblas.so.0",
            f"{triplet}/libopenblas.so.0",
            f"{triplet}/openblas-openmp/libopenblas.so.0",
            "/usr/lib64/libopenblasp.so.0",
            "/usr/lib64/libopenblas.so.0",
            "/usr/lib/libopenblas.so.0",
            "/usr/local/lib/libopenblas.so.0",
            "/opt/OpenBLAS/lib/libopenblas.so.0",
        ]
        + [os.path.join(p, "lib", "libopenblas.so.0") for p in prefixes]
    )
    system_entry = ("openblas", [system], None) if system else None

    # MKL is tuned for Intel; on an AMD EPYC the system OpenBLAS measured ~1.7x faster than pip
    # mkl (benchmarks/BENCHMARKS_blas.md), so elsewhere OpenBLAS goes first.
    intel = cpuinfo("vendor_id") == "GenuineIntel"
    ordered = (mkl_entry, system_entry) if intel else (system_entry, mkl_entry)
    yield from (entry for entry in ordered if entry is not None)


def _load(paths: list[str]) -> tuple[bool, str]:
    """Load each path with RTLD_GLOBAL; succeed if the last one exports cblas_sgemm."""
    handle = None
    for path in paths:
        # A bare soname (no slash) is left to the dynamic linker's search path.
        if os.sep in path and not os.path.exists(path):
            return False, f"{path} does not exist"
        try:
            handle = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
        except OSError as exc:
            return False, f"{path} failed to load: {exc}"
        _handles.append(handle)
    if handle is None or not hasattr(handle, "cblas_sgemm"):
        return False, f"{paths[-1]} does not export cblas_sgemm"
    return True, "loaded"


def _prefixes() -> list[str]:
    # pip puts mkl's libraries under <prefix>/lib; a venv may see a base or user install too.
    found = [sys.prefix, sys.base_prefix, os.environ.get("CONDA_PREFIX", ""), site.USER_BASE or ""]
    return list(dict.fromkeys(p for p in found if p))


def _site_dirs() -> list[str]:
    suffixes = ("site-packages", "dist-packages")
    return [p for p in sys.path if p.endswith(suffixes) and os.path.isdir(p)]


def _globbed(patterns: Iterator[str]) -> list[str]:
    # Highest soname first (libmkl_rt.so.3 before .so.2).
    return [path for pattern in patterns for path in sorted(glob.glob(pattern), reverse=True)]


def _first(paths) -> str | None:
    return next((p for p in paths if os.path.exists(p)), None)


class _DlInfo(ctypes.Structure):
    _fields_ = [
        ("dli_fname", ctypes.c_char_p),
        ("dli_fbase", ctypes.c_void_p),
        ("dli_sname", ctypes.c_char_p),
        ("dli_saddr", ctypes.c_void_p),
    ]


def _library_of(fn: ctypes._CFuncPtr) -> str | None:
    """The file a function pointer lives in, via dladdr (None if that is unavailable)."""
    try:
        dladdr = ctypes.CDLL(None).dladdr
    except AttributeError:
        return None
    dladdr.argtypes = [ctypes.c_void_p, ctypes.POINTER(_DlInfo)]
    dladdr.restype = ctypes.c_int
    info = _DlInfo()
    if not dladdr(ctypes.cast(fn, ctypes.c_void_p), ctypes.byref(info)) or not info.dli_fname:
        return None
    return os.fsdecode(info.dli_fname)


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        # stacklevel 4: _warn_once < _choose < ensure < its caller (phasegpt/__init__.py).
        warnings.warn(message, BlasWarning, stacklevel=4)
