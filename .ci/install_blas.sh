#!/usr/bin/env bash
# Give MLX an optimized BLAS on Linux: the system OpenBLAS (pthread build), which
# phasegpt.blas.ensure() finds and loads before mlx.core is imported.
#
# Why the system package rather than a pip one: ~15 MB and ~5 s to install, versus ~950 MB for
# pip `mkl`, and as fast as mkl on the machines we measured (see benchmarks/BENCHMARKS_blas.md).
# pip `cmeel-openblas` is an AVX-512-only build that dies of SIGILL on other CPUs.
#
# Safe to run more than once. Never fails the build: without an optimized BLAS, MLX still
# computes correctly, just 20-50x slower, and phasegpt warns.
set -u

if [ "$(uname -s)" != "Linux" ]; then
    echo "install_blas: $(uname -s) uses Accelerate; nothing to install"
    exit 0
fi

multiarch="/usr/lib/$(uname -m)-linux-gnu"
if [ -e "$multiarch/openblas-pthread/libopenblas.so.0" ] || [ -e "$multiarch/libopenblas.so.0" ]; then
    echo "install_blas: system OpenBLAS already present"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_blas: no apt-get; install your distribution's OpenBLAS (e.g. dnf install openblas)" \
         "or 'pip install mkl', or set PHASEGPT_BLAS to a library exporting cblas_sgemm"
    exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        sudo="sudo -n"
    else
        echo "install_blas: not root; run 'apt-get install libopenblas0-pthread' as root, or 'pip install mkl'"
        exit 0
    fi
fi

export DEBIAN_FRONTEND=noninteractive
if $sudo apt-get update -qq && $sudo apt-get install -y -qq --no-install-recommends libopenblas0-pthread >/dev/null; then
    echo "install_blas: installed libopenblas0-pthread"
else
    echo "install_blas: apt-get could not install libopenblas0-pthread; MLX will use its slow reference BLAS"
fi
exit 0
