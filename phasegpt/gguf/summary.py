"""What a GGUF file holds and what phasegpt would make of it, from the header alone (no tensor is decoded).

``phasegpt inspect FILE`` prints it; ``phasegpt.loading`` uses ``weights_bytes`` to check memory
before it loads anything.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from phasegpt.errors import ModelLoadError
from phasegpt.gguf import quants
from phasegpt.gguf.architectures import architecture
from phasegpt.gguf.reader import GGUFFile, open_gguf
from phasegpt.gguf.tokenizer import fallback_template


@dataclass(frozen=True)
class Summary:
    """A GGUF file as ``phasegpt inspect`` reports it (``to_dict`` gives the JSON form).

    Attributes:
        path: the file.
        file_bytes: its size on disk.
        architecture: ``general.architecture``.
        name: ``general.name``, if any.
        file_type: llama.cpp's name for the quantization mix (``Q4_K_M``), if recorded.
        parameters: number of weights.
        types: GGML type → ``{"tensors": n, "parameters": n}``, largest first.
        context_length: ``<arch>.context_length``.
        chat_template: ``file`` when the file carries one, else the name of phasegpt's fallback.
        tokenizer: ``tokenizer.ggml.model`` (``gpt2`` byte-level BPE or ``llama`` SentencePiece).
        loads_as: the mlx-lm model type, or None when phasegpt cannot load it.
        problem: why phasegpt cannot load it (None when it can).
        memory: target (``float32`` … ``native``) → bytes the weights take once loaded.
        native: what ``native`` makes of each quantized type present.
    """

    path: Path
    file_bytes: int
    architecture: str | None
    name: str | None
    file_type: str | None
    parameters: int
    types: dict[str, dict[str, int]]
    context_length: int | None
    chat_template: str
    tokenizer: str | None
    loads_as: str | None
    problem: str | None
    memory: dict[str, int] = field(default_factory=dict)
    native: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "path": str(self.path)}


def weights_bytes(file: GGUFFile, target: str) -> int:
    """Bytes the file's weights take in MLX when loaded for ``target`` (see ``quants.TARGETS``)."""
    total = 0
    for tensor in file.tensors:
        if tensor.kind in quants.READABLE:
            # every 2-D weight of the mapped architectures belongs to a Linear or an Embedding (plan checks 2-D)
            how = quants.plan(tensor.kind, tensor.shape, target, quantizable=tensor.name.endswith(".weight"))
            total += how.nbytes(tensor.shape)
    return total


def summarize(path: str | Path | GGUFFile) -> Summary:
    """Read the header of ``path`` and describe it.

    Raises:
        FileNotFoundError: the file does not exist.
        ModelLoadError: not a readable GGUF (an unsupported architecture or type is reported in
            ``Summary.problem`` instead).
    """
    file = path if isinstance(path, GGUFFile) else open_gguf(path)
    meta = file.metadata
    types: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    for tensor in file.tensors:
        types[tensor.kind] += tensor.size
        counts[tensor.kind] += 1
    loads_as, problem = None, None
    try:
        loads_as = architecture(file).model_type
    except ModelLoadError as error:
        problem = str(error)
    unreadable = sorted({t.kind for t in file.tensors if t.kind not in quants.READABLE})
    if unreadable and problem is None:
        problem = f"tensor types phasegpt cannot read: {', '.join(unreadable)}"
        loads_as = None
    template = "file" if meta.get("tokenizer.chat_template") else f"none in the file; phasegpt uses its " \
        f"{fallback_template(loads_as or 'llama')[0]} template"
    native = {kind: quants.plan(kind, (1, quants.REQUANT_GROUP), "native", quantizable=True).describe()
              for kind in types if kind in quants.READABLE and kind not in quants.FLOATS}
    arch = file.architecture
    return Summary(
        path=file.path, file_bytes=file.path.stat().st_size, architecture=arch, name=meta.get("general.name"),
        file_type=file.file_type, parameters=sum(types.values()),
        types={kind: {"tensors": counts[kind], "parameters": size} for kind, size in types.most_common()},
        context_length=meta.get(f"{arch}.context_length"), chat_template=template,
        tokenizer=meta.get("tokenizer.ggml.model"), loads_as=loads_as, problem=problem,
        memory={} if problem else {target: weights_bytes(file, target) for target in ("float32", "float16", "native")},
        native=native,
    )


def format_summary(s: Summary) -> str:
    """``key  value`` lines for a terminal."""
    gib = 2**30
    mix = ", ".join(f"{kind} {v['parameters'] / s.parameters:.0%} ({v['tensors']} tensors)" for kind, v in s.types.items())
    rows = [
        ("file", f"{s.path} ({s.file_bytes / gib:.2f} GiB)"),
        ("architecture", f"{s.architecture or '(none given)'}" + (f" ({s.name})" if s.name else "")),
        ("parameters", f"{s.parameters / 1e6:,.0f}M"),
        ("quantization", (f"{s.file_type}: " if s.file_type else "") + mix),
        ("context length", f"{s.context_length:,}" if s.context_length else "-"),
        ("tokenizer", s.tokenizer or "-"),
        ("chat template", s.chat_template),
        ("loads as", f"mlx-lm {s.loads_as}" if s.loads_as else f"cannot load: {s.problem}"),
    ]
    if s.memory:
        rows += [
            ("memory float32", f"{s.memory['float32'] / gib:.2f} GiB (what --dtype auto uses on a CPU when it fits)"),
            ("memory float16", f"{s.memory['float16'] / gib:.2f} GiB"),
            ("memory native", f"{s.memory['native'] / gib:.2f} GiB (--dtype native, and auto on a GPU)"),
        ]
        rows += [(f"  {kind}", f"native: {how}") for kind, how in s.native.items()]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)
