"""What `phasegpt doctor` prints: platform, MLX, the BLAS in use and how fast fp32 matmul really is."""

from __future__ import annotations

import dataclasses
import os
import platform
import sys
import time
from typing import Any

from phasegpt import blas

# Environment variables that change which BLAS is used or how it behaves; shown when set.
BLAS_ENV = ("PHASEGPT_BLAS", "LD_PRELOAD", "OPENBLAS_CORETYPE", "OPENBLAS_NUM_THREADS",
            "MKL_THREADING_LAYER", "OMP_NUM_THREADS")

# An optimized BLAS below this at n >= 512 means something is wrong (busy machine, threads
# capped). MLX's reference BLAS gives 1-7 GFLOP/s on x86_64; an optimized one 50-400.
SLOW_GFLOPS = 20.0


def measure_sgemm(*, n: int = 1024, reps: int = 5) -> float:
    """Time ``reps`` fp32 ``n x n`` matmuls with MLX on the default device.

    Args:
        n: Matrix side; 1024 takes ~20 ms per product on a fast BLAS, ~0.4 s on the stock one.
        reps: Timed repetitions after one untimed warm-up.

    Returns:
        Achieved GFLOP/s (``2 n^3`` flops per product).

    Raises:
        ValueError: If ``n`` or ``reps`` is not positive.
    """
    if n <= 0 or reps <= 0:
        raise ValueError(f"measure_sgemm needs n > 0 and reps > 0, got n={n}, reps={reps}")
    import mlx.core as mx

    a = mx.random.normal((n, n), dtype=mx.float32)
    b = mx.random.normal((n, n), dtype=mx.float32)
    mx.eval(a, b, a @ b)  # warm-up: BLAS thread pools start lazily
    start = time.perf_counter()
    for _ in range(reps):
        mx.eval(a @ b)
    seconds = (time.perf_counter() - start) / reps
    return 2.0 * n**3 / seconds / 1e9


def report(*, n: int = 1024, reps: int = 5) -> dict[str, Any]:
    """Collect what matters for speed on this machine (imports MLX; takes about 1-3 s).

    Args:
        n: Matrix side of the sgemm timing.
        reps: Timed repetitions of the sgemm timing.

    Returns:
        A JSON-serialisable dict: ``platform``, ``machine``, ``python``, ``cpu`` (model and flags
        that matter), ``mlx`` (version), ``device``, ``blas`` (the :class:`phasegpt.blas.BlasInfo`
        fields plus ``fast``), ``blas_provider`` (library whose ``cblas_sgemm`` MLX binds),
        ``blas_env`` (the :data:`BLAS_ENV` variables that are set), ``sgemm_gflops``,
        ``sgemm_size`` and ``advice`` (a list of strings, empty when all is well).
    """
    import mlx.core as mx

    info = blas.active()
    flags = blas.cpu_flags()
    gflops = measure_sgemm(n=n, reps=reps)
    provider = blas.provider()
    advice: list[str] = []
    if sys.platform.startswith("linux") and provider is None:
        advice.append(
            "MLX is on its reference BLAS (fp32 matmul 20-50x slower). Install an optimized one "
            "(`pip install mkl`, or as root `apt-get install libopenblas0-pthread`), import "
            "phasegpt before mlx, or set PHASEGPT_BLAS to a library exporting cblas_sgemm."
        )
    elif sys.platform.startswith("linux") and gflops < SLOW_GFLOPS and n >= 512:
        advice.append(
            f"fp32 matmul reached only {gflops:.1f} GFLOP/s with {info.name}: is the machine "
            "busy, or are OPENBLAS_NUM_THREADS/OMP_NUM_THREADS limiting threads?"
        )
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": sys.version.split()[0],
        "cpu": {
            "model": cpu_model(),
            "flags": sorted(flags & {"avx", "avx2", "fma", "avx512f", "asimd", "sve"}),
        },
        "mlx": getattr(mx, "__version__", "unknown"),
        "device": str(mx.default_device()),
        "blas": {**dataclasses.asdict(info), "notes": list(info.notes), "fast": info.fast},
        "blas_provider": provider,
        "blas_env": {k: os.environ[k] for k in BLAS_ENV if os.environ.get(k)},
        "sgemm_gflops": round(gflops, 1),
        "sgemm_size": n,
        "advice": advice,
    }


def format_report(d: dict[str, Any]) -> str:
    """Render :func:`report`'s dict as aligned ``key: value`` lines for a terminal."""
    b = d["blas"]
    rows = [
        ("platform", d["platform"]),
        ("python", d["python"]),
        ("cpu", f"{d['cpu']['model']} ({' '.join(d['cpu']['flags']) or 'no flags read'})"),
        ("mlx", d["mlx"]),
        ("device", d["device"]),
        ("blas", f"{b['name']} ({b['reason']})"),
        ("blas path", b["path"] or "-"),
        ("cblas_sgemm from", d["blas_provider"] or "MLX's bundled reference BLAS"),
        (f"fp32 matmul {d['sgemm_size']}^3", f"{d['sgemm_gflops']:.1f} GFLOP/s"),
    ]
    rows += [("skipped", note) for note in b["notes"]]
    rows += [(key, value) for key, value in d["blas_env"].items()]
    width = max(len(k) for k, _ in rows)
    lines = [f"{k.ljust(width)}  {v}" for k, v in rows]
    lines += [f"advice: {a}" for a in d["advice"]]
    return "\n".join(lines)


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo``, else what :mod:`platform` says."""
    return blas.cpuinfo("model name") or platform.processor() or "unknown"
