"""Open a GGUF file with llama.cpp's own reader (the ``gguf`` package) and turn its errors into ours.

Only the header is parsed here; tensor data stays memory-mapped until ``phasegpt.gguf.quants``
decodes it one tensor at a time.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, GGUFValueType, LlamaFileType

from phasegpt.errors import ModelLoadError

REINSTALL = "download or convert it again"
_ARRAY = int(GGUFValueType.ARRAY)  # compared once per metadata value: an enum lookup each time is slow


class _Reader(GGUFReader):
    """``GGUFReader`` over a plain ndarray view of its memory map.

    ``np.memmap`` does bookkeeping on every slice, and the reader slices a few times per
    vocabulary entry: Gemma's 262k tokens took 11.5 s to parse through it and 3.2 s without it.
    The view shares the map, so tensor data is still read from the file only when used.
    """

    @property
    def data(self) -> np.ndarray:
        return self._plain

    @data.setter
    def data(self, value: np.memmap) -> None:
        self.mapping = getattr(value, "_mmap", None)  # numpy keeps the mmap object here
        self._plain = value.view(np.ndarray)

    def _get_field_parts(self, orig_offs: int, raw_type: int) -> tuple[int, list[np.ndarray], list[int], list]:
        """Arrays in fewer numpy views than the reader's one ``_get`` per element: an array of
        numbers as one view, an array of strings as a plain loop over (uint64 length, bytes)
        pairs. Gemma's 262k-token vocabulary (tokens, scores, types) took 3.4 s to parse, 0.6 s so.
        Everything else, and files in the other byte order, goes through the reader's own code.
        """
        if raw_type != _ARRAY or self.byte_order != "I":
            return super()._get_field_parts(orig_offs, raw_type)
        item_type, count = self._get(orig_offs, np.uint32), self._get(orig_offs + 4, np.uint64)
        item = GGUFValueType(int(item_type[0]))
        # ReaderField.contents() reads the parts that ``data`` indexes, by the element type (last).
        parts, types = [item_type, count], [GGUFValueType.ARRAY, item]
        if item in self.gguf_scalar_to_np:
            values = self._get(orig_offs + 12, self.gguf_scalar_to_np[item], count[0])
            return 12 + values.nbytes, [*parts, values], [2], types
        if item != GGUFValueType.STRING:
            return super()._get_field_parts(orig_offs, raw_type)  # nested arrays
        data, offs = self.data, orig_offs + 12
        for _ in range(int(count[0])):
            length = data[offs : offs + 8].view(np.uint64)
            size = int(length[0])
            parts += (length, data[offs + 8 : offs + 8 + size])
            offs += 8 + size
        return offs - orig_offs, parts, list(range(3, len(parts), 2)), types


@dataclass(frozen=True)
class Tensor:
    """One tensor of the file, its data still memory-mapped.

    Attributes:
        name: the GGUF name, e.g. ``blk.0.attn_q.weight``.
        kind: the GGML type name, e.g. ``Q4_K``.
        shape: row-major shape (rows first), as numpy and MLX see it.
        data: the raw data; quantized types are ``uint8`` of shape ``(rows, bytes per row)``.
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    data: np.ndarray
    offset: int = 0  # of the data in the file

    @property
    def size(self) -> int:
        """Number of elements."""
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        """Bytes the tensor takes in the file."""
        block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType[self.kind]]
        return self.size // block * type_size


@dataclass(frozen=True)
class GGUFFile:
    """A parsed GGUF header.

    Attributes:
        path: the file.
        metadata: every key as a plain Python value (str, int, float, bool or list); float32
            scalars in their shortest spelling (``1e-05``, not ``9.999999747378752e-06``).
        tensors: the tensors in file order.
    """

    path: Path
    metadata: dict[str, Any]
    tensors: tuple[Tensor, ...]
    mapping: mmap.mmap | None = field(default=None, repr=False, compare=False)

    @property
    def architecture(self) -> str | None:
        return self.metadata.get("general.architecture")

    @property
    def file_type(self) -> str | None:
        """llama.cpp's name for the quantization mix it wrote, e.g. ``Q4_K_M``."""
        value = self.metadata.get("general.file_type")
        try:
            return LlamaFileType(value).name.removeprefix("MOSTLY_").removeprefix("ALL_")
        except ValueError:
            return None if value is None else f"file type {value}"

    def tensor(self, name: str) -> Tensor | None:
        return next((t for t in self.tensors if t.name == name), None)

    def release(self, tensor: Tensor) -> None:
        """Let the kernel drop the file's pages of a decoded tensor from this process's memory.

        They stay in the page cache and are read again if touched; without this every page
        read counts towards the process's resident memory until the file is closed, adding the
        file's size to the peak of a load.
        """
        if self.mapping is None or not hasattr(mmap, "MADV_DONTNEED"):
            return
        start = tensor.offset - tensor.offset % mmap.PAGESIZE
        self.mapping.madvise(mmap.MADV_DONTNEED, start, tensor.offset + tensor.nbytes - start)


def open_gguf(path: str | Path) -> GGUFFile:
    """Parse the header of a GGUF file without reading its tensor data.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ModelLoadError: not a GGUF file, truncated, corrupt, or a tensor type the installed
            ``gguf`` package does not know.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file {path} does not exist; check the path.")
    try:
        reader = _Reader(path, "r")
    except ValueError as error:
        if "GGMLQuantizationType" in str(error):
            from importlib.metadata import version

            raise ModelLoadError(
                f"{path} holds a tensor of an unknown quantization type ({error}); it was written by a newer "
                f"llama.cpp than gguf {version('gguf')} knows: upgrade it (`pip install -U gguf`) "
                "or convert the model to Q4_K_M or Q8_0"
            ) from error
        raise corrupt(path, str(error)) from error
    except (IndexError, KeyError, OverflowError, UnicodeDecodeError) as error:
        raise corrupt(path, f"{error.__class__.__name__}: {error}") from error
    try:
        metadata = {key: _plain(field) for key, field in reader.fields.items() if not key.startswith("GGUF.")}
    except (IndexError, ValueError, UnicodeDecodeError) as error:
        raise corrupt(path, f"metadata unreadable: {error}") from error
    tensors = tuple(
        Tensor(t.name, t.tensor_type.name, tuple(int(d) for d in reversed(t.shape.tolist())), t.data, t.data_offset)
        for t in reader.tensors
    )
    return GGUFFile(path, metadata, tensors, reader.mapping)


def corrupt(path: Path, detail: str) -> ModelLoadError:
    """The error for a file the reader cannot make sense of."""
    return ModelLoadError(
        f"{path} is not a readable GGUF file ({detail}); it may be truncated or corrupt: {REINSTALL}"
    )


def _plain(field: Any) -> Any:
    value = field.contents()
    if field.types == [GGUFValueType.FLOAT32]:
        return float(str(np.float32(value)))
    return value
