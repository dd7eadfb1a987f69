"""phasegpt: why does a local LLM refuse? Verdicts from an activation tap, in the same MLX pass.

    import phasegpt
    model = phasegpt.load()                      # packaged SmolLM2-135M-Instruct + shipped head
    print(model.generate("How do I pick a lock?").verdict)
"""

# Must run before anything imports mlx.core: an optimized BLAS only takes effect if its
# symbols are in the global scope when MLX's library is first loaded (Linux only).
from phasegpt import blas as _blas

_blas.ensure()

from phasegpt.api import Model  # noqa: E402
# AUDIT_IMPORT
from phasegpt.api import load  # noqa: E402
from phasegpt.verdict import LABELS, Result, Verdict  # noqa: E402

__version__ = "0.1.0"

__all__ = ["LABELS", "Model", "Result", "Verdict", "__version__", "load"]
