"""GGUF files (llama.cpp, LM Studio, Ollama) as mlx-lm models: read, map, decode, tokenize, inspect.

``reader`` parses the header with the ``gguf`` package, ``architectures`` maps each supported
architecture onto mlx-lm's model class, ``quants`` decodes each tensor type into MLX arrays,
``tokenizer`` rebuilds the Hugging Face tokenizer from the metadata, ``loader`` puts them together
one tensor at a time, and ``summary`` says what a file holds without decoding any weights.
"""

from phasegpt.gguf.loader import GGUFModel, load_gguf
from phasegpt.gguf.tokenizer import MISTRAL_CHAT_TEMPLATE

__all__ = ["MISTRAL_CHAT_TEMPLATE", "GGUFModel", "load_gguf"]
