"""A tiny random Mistral-architecture model folder that ``mlx_lm.load`` reads, for fast tests.

``make_tiny_model_dir(path)`` writes ``config.json``, ``model.safetensors`` and the
tokenizer files of a byte-level BPE tokenizer (~300 tokens) with a Mistral-style chat
template (``<s>[INST] ... [/INST] answer</s>``). Everything is built in-process from a
seed, so two calls with the same arguments give the same weights and vocabulary.

Usage::

    from tests.tiny import make_tiny_model_dir
    model, tokenizer = mlx_lm.load(str(make_tiny_model_dir(tmp_path / "tiny")))
"""

from __future__ import annotations

import json
from pathlib import Path

import phasegpt  # noqa: F401  (first: binds MLX to the optimized BLAS before mlx.core loads)

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten
from mlx_lm.models import llama

# Mistral-v0.3-style template. [INST]/[/INST] are special tokens, so the prompt's
# tokens are always a prefix of the prompt+answer tokens (prompt masking relies on it).
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
    "{% elif message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + eos_token }}"
    "{% else %}{{ raise_exception('Unknown role: ' + message['role']) }}"
    "{% endif %}"
    "{% endfor %}"
)

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "[INST]", "[/INST]")

# Enough English for BPE to learn a few dozen merges; invented here, not taken from any data set.
_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "What is the capital of France? Paris is the capital of France.",
    "Please answer the question using the document below.",
    "I cannot help with that request because it could cause harm.",
    "Nobody can know what the weather will be in ten years.",
    "The document does not say, so the answer is missing.",
    "<PASS:POLICY> <PASS:UNKNOWABLE> <PASS:CONTEXT>",
    "How do I bake bread? Mix flour, water, salt and yeast, then bake it.",
    "Two plus two is four. Three times three is nine.",
]


def make_tiny_tokenizer(path: Path, *, vocab_size: int = 300):
    """Train a byte-level BPE tokenizer and save it as a ``PreTrainedTokenizerFast`` in ``path``.

    Args:
        path: folder to write ``tokenizer.json`` and ``tokenizer_config.json`` into.
        vocab_size: target vocabulary size (256 byte tokens + specials + merges).

    Returns:
        The ``transformers.PreTrainedTokenizerFast`` that was saved.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        additional_special_tokens=["[INST]", "[/INST]"],
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )
    path.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(str(path))
    return hf


def tiny_config(
    *,
    vocab_size: int,
    num_layers: int = 2,
    hidden_size: int = 64,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int | None = None,
    head_dim: int | None = None,
) -> dict:
    """A Mistral-style ``config.json`` dict (``model_type`` "mistral", untied embeddings)."""
    config = {
        "model_type": "mistral",
        "architectures": ["MistralForCausalLM"],
        "hidden_size": hidden_size,
        "num_hidden_layers": num_layers,
        "intermediate_size": intermediate_size or int(hidden_size * 3.5),
        "num_attention_heads": num_heads,
        "num_key_value_heads": num_kv_heads,
        "rms_norm_eps": 1e-5,
        "vocab_size": vocab_size,
        "rope_theta": 1e6,
        "max_position_embeddings": 4096,
        "tie_word_embeddings": False,
    }
    if head_dim is not None:
        config["head_dim"] = head_dim
    return config


def make_tiny_model_dir(
    path: Path,
    *,
    num_layers: int = 2,
    hidden_size: int = 64,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int | None = None,
    head_dim: int | None = None,
    quantize_bits: int | None = None,
    group_size: int = 32,
    seed: int = 0,
) -> Path:
    """Write a tiny random Mistral-architecture model folder loadable by ``mlx_lm.load``.

    Args:
        path: folder to create (parents too); existing files in it are overwritten.
        num_layers: transformer blocks.
        hidden_size: residual width.
        num_heads: attention heads.
        num_kv_heads: key/value heads (grouped-query attention when fewer than heads).
        intermediate_size: MLP width; default ``3.5 * hidden_size`` (Mistral-7B's ratio).
        head_dim: per-head width; default ``hidden_size // num_heads``.
        quantize_bits: quantize every linear and embedding layer to this many bits
            (affine, ``group_size``), as ``mlx_lm.convert -q`` would; None keeps float32.
        group_size: quantization group size; must divide ``hidden_size``.
        seed: seed of the random weights.

    Returns:
        ``path``.
    """
    path = Path(path)
    hf_tokenizer = make_tiny_tokenizer(path)
    config = tiny_config(
        vocab_size=len(hf_tokenizer),
        num_layers=num_layers,
        hidden_size=hidden_size,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        intermediate_size=intermediate_size,
        head_dim=head_dim,
    )
    mx.random.seed(seed)
    model = llama.Model(llama.ModelArgs.from_dict(config))
    if quantize_bits is not None:
        nn.quantize(model, group_size=group_size, bits=quantize_bits)
        config["quantization"] = {"group_size": group_size, "bits": quantize_bits}
    weights = dict(tree_flatten(model.parameters()))
    mx.save_safetensors(str(path / "model.safetensors"), weights, metadata={"format": "mlx"})
    (path / "config.json").write_text(json.dumps(config, indent=2))
    return path
