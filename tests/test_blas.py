"""The BLAS loader: what it picks, that MLX really binds to it, and that it never breaks import.

The choice happens when phasegpt is imported, before mlx.core, so most checks run in a fresh
subprocess. None asserts a speed (that is benchmarks/blas.py's job) or which library a given
machine has: they assert that whatever was chosen is the library MLX's cblas_sgemm resolves to,
and that matmul and LAPACK results under it match numpy.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="BLAS loading is Linux-only")

# Runs in a child: optional lines before importing phasegpt, then MLX results vs numpy in float64.
CHILD = """
import json, warnings
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
{before}
    import phasegpt
    from phasegpt import blas
    blas.ensure()  # a second call must neither reload nor warn again
import mlx.core as mx
import numpy as np

rng = np.random.default_rng(0)
def rand(shape, dtype):
    x = rng.standard_normal(shape)
    if np.issubdtype(dtype, np.complexfloating):
        x = x + 1j * rng.standard_normal(shape)
    return x.astype(dtype)

errors = {{}}
# Odd sizes so no kernel gets a tidy power of two; one dtype per BLAS entry point MLX uses.
for np_dtype, mx_dtype in ((np.float32, mx.float32), (np.float64, mx.float64), (np.complex64, mx.complex64)):
    a, b = rand((67, 129), np_dtype), rand((129, 45), np_dtype)
    got = mx.matmul(mx.array(a, dtype=mx_dtype), mx.array(b, dtype=mx_dtype), stream=mx.cpu)
    mx.eval(got)
    want = a.astype(np.complex128) @ b.astype(np.complex128)
    errors[np.dtype(np_dtype).name] = float(np.abs(np.array(got) - want).max() / np.abs(want).max())
# LAPACK in MLX calls the Fortran BLAS, which an optimized library also interposes.
m = rand((24, 24), np.float32) + 24 * np.eye(24, dtype=np.float32)
inv = mx.linalg.inv(mx.array(m), stream=mx.cpu)
mx.eval(inv)
errors["inv"] = float(np.abs(np.array(inv) @ m - np.eye(24)).max())

info = blas.active()
print(json.dumps({{
    "info": {{"name": info.name, "path": info.path, "reason": info.reason,
              "notes": list(info.notes), "fast": info.fast}},
    "provider": blas.provider(),
    "errors": errors,
    "warnings": [[w.category.__name__, str(w.message)] for w in caught],
}}))
"""

TOLERANCE = {"float32": 1e-5, "float64": 1e-12, "complex64": 1e-5, "inv": 1e-4}


def run_child(before: str = "", **env_overrides: str) -> dict:
    """Run CHILD in a fresh interpreter with the caller's BLAS settings removed, then the overrides."""
    env = {k: v for k, v in os.environ.items() if k not in ("PHASEGPT_BLAS", "LD_PRELOAD")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env.update(env_overrides)
    code = CHILD.format(before=textwrap.indent(before or "pass", "    "))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"child exited {out.returncode}:\n{out.stderr}"
    return json.loads(out.stdout.strip().splitlines()[-1])


def assert_correct(result: dict) -> None:
    for key, tol in TOLERANCE.items():
        assert result["errors"][key] < tol, f"{key} under {result['info']['name']}: {result['errors']}"


def blas_warnings(result: dict) -> list[str]:
    return [msg for category, msg in result["warnings"] if category == "BlasWarning"]


@linux_only
def test_default_choice_is_what_mlx_binds_and_computes_correctly():
    result = run_child()
    info = result["info"]
    assert_correct(result)
    if info["fast"]:
        # MLX resolves cblas_sgemm from the global scope: it must be the library we loaded.
        assert result["provider"] is not None
        assert os.path.realpath(result["provider"]) == os.path.realpath(info["path"])
        assert blas_warnings(result) == []
    else:
        # Nothing optimized on this machine: one warning naming the fix, and MLX's own BLAS.
        assert info["name"] == "stock" and result["provider"] is None
        (message,) = blas_warnings(result)
        assert "PHASEGPT_BLAS" in message and "apt-get install libopenblas0-pthread" in message


@linux_only
def test_none_keeps_stock_blas_silently_and_correct():
    result = run_child(PHASEGPT_BLAS="none")
    assert result["info"]["name"] == "stock"
    assert result["provider"] is None
    assert blas_warnings(result) == []
    assert_correct(result)


@linux_only
def test_importing_mlx_first_warns_once_with_the_fix():
    result = run_child(before="import mlx.core")
    assert result["info"]["name"] == "stock"
    assert result["provider"] is None
    (message,) = blas_warnings(result)  # exactly one, despite the second ensure()
    assert "import phasegpt before mlx" in message.lower() and "LD_PRELOAD" in message
    assert_correct(result)


@linux_only
@pytest.mark.parametrize("kind", ["missing", "not_a_library", "no_cblas"])
def test_unusable_override_warns_instead_of_crashing(tmp_path, kind):
    path = {
        "missing": str(tmp_path / "nope" / "libopenblas.so.0"),
        "not_a_library": str(tmp_path / "libfake.so"),
        "no_cblas": "libm.so.6",  # a real shared library without cblas_sgemm
    }[kind]
    (tmp_path / "libfake.so").write_text("not an ELF file")
    result = run_child(PHASEGPT_BLAS=path)
    assert result["info"]["name"] == "stock"
    assert result["provider"] is None
    (message,) = blas_warnings(result)
    assert path in message and "PHASEGPT_BLAS" in message
    assert_correct(result)


@linux_only
def test_override_with_a_real_library_is_used(tmp_path):
    found = run_child()
    if not found["info"]["fast"]:
        pytest.skip("no optimized BLAS on this machine to point PHASEGPT_BLAS at")
    result = run_child(PHASEGPT_BLAS=found["info"]["path"])
    assert result["info"]["name"] == "custom"
    assert result["provider"] is not None
    assert os.path.realpath(result["provider"]) == os.path.realpath(found["info"]["path"])
    assert_correct(result)


@linux_only
def test_cmeel_openblas_is_never_loaded_unless_the_cpu_can_run_it(tmp_path):
    # A fake cmeel-openblas on sys.path: on a CPU without AVX-512 it must be skipped by the flag
    # check (loading the real one dies of SIGILL); on one with AVX-512 the empty file fails to load.
    lib = tmp_path / "site-packages" / "cmeel.prefix" / "lib"
    lib.mkdir(parents=True)
    (lib / "libopenblas.so.0").write_bytes(b"")
    result = run_child(before=f"import sys; sys.path.append({str(tmp_path / 'site-packages')!r})")
    assert result["info"]["name"] != "cmeel-openblas"
    cmeel_notes = [n for n in result["info"]["notes"] if n.startswith("cmeel-openblas:")]
    from phasegpt import blas

    if "avx512f" in blas.cpu_flags():
        assert cmeel_notes and "failed to load" in cmeel_notes[0]
    else:
        assert cmeel_notes and "CPU lacks" in cmeel_notes[0] and "avx512f" in cmeel_notes[0]
    assert_correct(result)


@linux_only
def test_preloaded_blas_is_respected_even_after_mlx(tmp_path):
    found = run_child()
    if not found["info"]["fast"]:
        pytest.skip("no optimized BLAS on this machine to LD_PRELOAD")
    result = run_child(before="import mlx.core", LD_PRELOAD=found["info"]["path"])
    assert result["info"]["name"] == "preloaded"
    assert blas_warnings(result) == []
    assert_correct(result)


def test_in_process_record_is_frozen_and_set():
    import phasegpt  # noqa: F401  (runs ensure)
    from phasegpt import blas

    info = blas.active()
    assert info.name != "unchecked"
    assert blas.ensure() is info
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.name = "other"  # type: ignore[misc]


def test_doctor_report_matches_the_active_blas():
    from phasegpt import blas, doctor

    d = doctor.report(n=128, reps=1)
    json.dumps(d)  # the CLI prints it as JSON
    assert d["blas"]["name"] == blas.active().name
    assert d["sgemm_gflops"] > 0
    text = doctor.format_report(d)
    assert "GFLOP/s" in text and blas.active().name in text
    with pytest.raises(ValueError, match="n > 0"):
        doctor.measure_sgemm(n=0)


@linux_only
def test_one_thread_holds_the_blas_to_one_thread_and_restores_it():
    import threading

    from phasegpt import blas

    control = blas.thread_control()
    if control is None:  # MLX's own BLAS (no threads) or a library without a usable setter
        assert blas.single_threaded_ok() == (blas.active().name == "stock")
        pytest.skip(f"no thread control for {blas.active().name}")
    get, set_ = control
    before = get()
    set_(2)  # so that "1 inside" is a change even on a one-core machine
    try:
        with blas.one_thread():
            assert get() == 1
        assert get() == 2
        with pytest.raises(RuntimeError), blas.one_thread():
            raise RuntimeError("restored on error too")
        assert get() == 2
        # overlapping blocks in two threads: the first to leave must not restore the count under the other
        entered, release = threading.Event(), threading.Event()

        def other():
            with blas.one_thread():
                entered.set()
                release.wait(10)

        t = threading.Thread(target=other)
        t.start()
        assert entered.wait(10)
        with blas.one_thread():
            release.set()
            t.join(10)
            assert get() == 1  # the other thread has left; this block still runs single-threaded
        assert get() == 2
    finally:
        set_(before)
