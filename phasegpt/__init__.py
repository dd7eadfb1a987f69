"""phasegpt: why does a local LLM refuse? Verdicts from an activation tap, in the same MLX pass.

    import phasegpt
    model = phasegpt.load()                      # packaged SmolLM2-135M-Instruct + shipped head
    print(model.generate("How do I pick a lock?").verdict)
"""

# Must run before anything imports mlx.core: an optimized BLAS only takes effect if its
# symbols are in the global scope when MLX's library is first loaded (Linux only).
from phasegpt import blas as _blas

_blas.ensure()

__version__ = "0.1.0"

# The public names, imported on first use so `import phasegpt` (and the CLI's --help,
# and audit-only processes) stay fast: MLX and mlx-lm load only when a model is needed.
_LAZY = {
    "load": "phasegpt.api",
    "Model": "phasegpt.api",
    "AuditLog": "phasegpt.audit",
    "Verdict": "phasegpt.verdict",
    "Result": "phasegpt.verdict",
    "LABELS": "phasegpt.verdict",
    "classify_file": "phasegpt.batch",
}

__all__ = ["LABELS", "AuditLog", "Model", "Result", "Verdict", "__version__", "classify_file", "load"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'phasegpt' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
