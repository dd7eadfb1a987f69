"""load_gguf on tiny files written here: every tensor type, every architecture, the dtype policy, bad input.

Each file is compared with the same weights loaded the ordinary mlx-lm way (tests/gguf_fixtures.py);
the real models (SmolLM2, Gemma 3) are in test_gguf_real.py.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from gguf import GGUFReader
from mlx_lm.generate import generate_step
from transformers import AutoConfig

from phasegpt import loading
from phasegpt.errors import ModelLoadError
from phasegpt.gguf import load_gguf, quants
from phasegpt.gguf.reader import open_gguf
from tests import gguf_fixtures as fx

LLAMA = fx.FAMILIES["llama"]
PROMPT = mx.array([fx.PROMPT])


def write(tmp_path: Path, family: fx.Family = LLAMA, name: str = "tiny", **kw) -> tuple[Path, dict[str, np.ndarray]]:
    path = tmp_path / f"{name}.gguf"
    return path, fx.write_gguf(path, family, fx.hf_weights(family), **kw)


def logits(model: nn.Module) -> np.ndarray:
    out = model(PROMPT).astype(mx.float32)
    mx.eval(out)
    return np.array(out)


def greedy(model: nn.Module, steps: int = 8) -> list[int]:
    return [int(t) for t, _ in zip((tok for tok, _ in generate_step(PROMPT[0], model)), range(steps))]


@pytest.fixture(scope="module")
def typed(tmp_path_factory):
    """``typed(kind)``: a llama file with every 2-D tensor (embedding and output included) in ``kind``,
    what it decodes to, and the mlx-lm reference model's logits; written once per kind."""
    made: dict[str, tuple[Path, dict[str, np.ndarray], np.ndarray]] = {}

    def make(kind: str):
        if kind not in made:
            folder = tmp_path_factory.mktemp(kind)
            path, decoded = write(folder, kind=kind)
            made[kind] = path, decoded, logits(fx.reference_model(folder / "ref", LLAMA, decoded))
        return made[kind]

    return make


@pytest.mark.parametrize("kind", fx.ALL_TYPES)
def test_every_type_in_float32_matches_mlx_lm(typed, kind):
    """q/k rows are permuted as llama.cpp does, so the raw-row unpermutation is checked for every type."""
    path, _, expected = typed(kind)
    loaded = load_gguf(path, dtype="float32")
    assert loaded.dtype == "float32" and "quantization" not in loaded.config
    assert {w.dtype for _, w in _flat(loaded.model)} == {mx.float32}
    # The legacy types decode through MLX's float16 dequantize (as mx.load's arrays always did),
    # the reference through gguf's float32 one: they differ by float16 rounding.
    tolerance = 2e-3 if kind in quants.EXACT else 1e-5
    assert np.abs(logits(loaded.model) - expected).max() <= tolerance * np.abs(expected).max()


@pytest.mark.parametrize("kind", fx.ALL_TYPES)
def test_every_type_native(typed, kind):
    """native: floats as stored, legacy types exactly as MLX affine, K-/I-quants re-quantized within the bound."""
    path, decoded, _ = typed(kind)
    loaded = load_gguf(path, dtype="native")
    down = loaded.model.layers[1].mlp.down_proj
    expected = decoded["model.layers.1.mlp.down_proj.weight"]
    if kind in quants.FLOATS:
        assert type(down) is nn.Linear and down.weight.dtype == getattr(mx, quants.FLOATS[kind])
        assert np.array_equal(np.array(down.weight.astype(mx.float32)), expected)
        assert loaded.dtype == "native"
        return
    assert isinstance(down, nn.QuantizedLinear) and isinstance(loaded.model.model.embed_tokens, nn.QuantizedEmbedding)
    assert loaded.dtype == "quantized"
    values = np.array(mx.dequantize(down.weight, down.scales.astype(mx.float32), down.biases.astype(mx.float32),
                                    group_size=down.group_size, bits=down.bits))
    if kind in quants.EXACT:
        assert (down.bits, down.group_size) == (quants.EXACT[kind][0], 32)
        assert np.array_equal(values, expected)  # the file's own numbers, bit for bit
    else:
        assert (down.bits, down.group_size) == (quants.REQUANT_BITS[kind], 64)
        groups = expected.reshape(expected.shape[0], -1, 64)
        step = (groups.max(-1) - groups.min(-1)) / (2**down.bits - 1)  # one quantization step per group
        error = np.abs(values - expected).reshape(groups.shape).max(-1)
        # MLX moves the grid so that zero is exact, which can cost up to a step; plus float16 scales.
        assert (error <= step + 1e-3 * np.abs(groups).max(-1)).all()
    assert loaded.config["quantization"]["bits"] == down.bits


def test_fingerprint_is_the_same_in_every_dtype_and_tells_files_apart(tmp_path):
    path, _ = write(tmp_path, kind="Q4_K")
    prints = {dtype: load_gguf(path, dtype=dtype).fingerprint for dtype in ("float32", "float16", "native")}
    assert len(set(prints.values())) == 1 and len(prints["native"]) == 16
    other = tmp_path / "other.gguf"
    fx.write_gguf(other, LLAMA, fx.hf_weights(LLAMA), kind="Q4_K", seed=1)  # other random blocks
    assert load_gguf(other).fingerprint != prints["native"]


@pytest.mark.parametrize("arch", fx.FAMILIES)
@pytest.mark.parametrize("kind", ["F32", "Q4_K"])
def test_architecture_matches_mlx_lm(tmp_path, arch, kind):
    family = fx.FAMILIES[arch]
    path, decoded = write(tmp_path, family, kind=kind)
    loaded = load_gguf(path, dtype="float32")
    reference = fx.reference_model(tmp_path / "ref", family, decoded)
    assert type(loaded.model) is type(reference)  # mlx-lm's own class for the family
    for key, value in fx.hf_config(family).items():
        assert loaded.config[key] == value and type(loaded.config[key]) is type(value), key
    # A folder saved with this config must load elsewhere too: transformers' config classes check types.
    AutoConfig.for_model(**loaded.config)
    expected = logits(reference)
    assert np.abs(logits(loaded.model) - expected).max() <= 1e-5 * np.abs(expected).max()
    assert greedy(loaded.model) == greedy(reference)


def test_llama3_rope_factors_become_mlx_lms_llama3_rope(tmp_path):
    """Llama 3.1+ files carry their rope scaling as rope_freqs.weight; Llama 3.2 1B/3B tie the output."""
    scaling = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192}
    family = fx.Family("llama", "llama", fx.FAMILIES["llama"].layer, permute=True, config={"rope_scaling": scaling},
                       meta={"rope.dimension_count": fx.HEAD_DIM})
    extra = {"rope_freqs.weight": fx.llama3_rope_factors(factor=32.0)}
    path, decoded = write(tmp_path, family, kind="Q4_K", extra=extra)
    loaded = load_gguf(path, dtype="float32")
    assert loaded.config["rope_scaling"] == scaling
    reference = fx.reference_model(tmp_path / "ref", family, decoded)
    expected = logits(reference)
    assert np.abs(logits(loaded.model) - expected).max() <= 1e-5 * np.abs(expected).max()
    # llama.cpp divides each rotation angle by its factor; mlx-lm multiplies each period by it.
    rope = loaded.model.layers[0].self_attn.rope
    periods = 10000.0 ** (np.arange(0, fx.HEAD_DIM, 2) / fx.HEAD_DIM)
    assert np.allclose(np.array(rope._freqs) / periods, extra["rope_freqs.weight"], rtol=1e-5)


def test_rope_factors_that_are_not_llama3s(tmp_path):
    extra = {"rope_freqs.weight": fx.llama3_rope_factors(low=2.0)}
    path, _ = write(tmp_path, fx.FAMILIES["mistral"], extra=extra)
    with pytest.raises(ModelLoadError, match="rope_freqs.weight\\) that are not Llama 3's; use an MLX folder"):
        load_gguf(path)


@pytest.mark.parametrize("arch", fx.FAMILIES)
def test_architecture_native_stays_close(tmp_path, arch):
    family = fx.FAMILIES[arch]
    path, decoded = write(tmp_path, family, kinds={"token_embd.weight": "Q8_0"}, kind="Q6_K")
    loaded = load_gguf(path, dtype="native")
    expected, got = logits(fx.reference_model(tmp_path / "ref", family, decoded)), logits(loaded.model)
    cosine = (expected * got).sum() / np.linalg.norm(expected) / np.linalg.norm(got)
    assert cosine > 0.99 and isinstance(loaded.model.layers[0].mlp.down_proj, nn.QuantizedLinear)


def test_legacy_types_repack_exactly_as_mlx_reads_them(tmp_path):
    """MLX's own GGUF reader holds Q4_0/Q4_1/Q8_0 as affine triples: ours must be the same bits."""
    kinds = {"blk.0.ffn_down.weight": "Q4_0", "blk.1.ffn_down.weight": "Q4_1", "token_embd.weight": "Q8_0"}
    path, _ = write(tmp_path, kinds=kinds)
    loaded, theirs = load_gguf(path, dtype="native").model, mx.load(str(path))
    ours = {"blk.0.ffn_down": loaded.layers[0].mlp.down_proj, "blk.1.ffn_down": loaded.layers[1].mlp.down_proj,
            "token_embd": loaded.model.embed_tokens}
    for name, module in ours.items():
        for part in ("weight", "scales", "biases"):
            assert np.array_equal(np.array(getattr(module, part)), np.array(theirs[f"{name}.{part}"])), (name, part)


def test_load_model_dtype_policy(tmp_path):
    path, _ = write(tmp_path, kind="Q4_K")
    auto, native, half = (loading.load_model(path, dtype=d) for d in ("auto", "native", "float16"))
    assert (auto.dtype, native.dtype, half.dtype) == ("float32", "quantized", "float16")  # auto on this CPU
    assert auto.fingerprint == native.fingerprint == half.fingerprint and auto.name == "tiny"
    assert {w.dtype for _, w in _flat(half.model)} == {mx.float16}


def test_memory_is_checked_before_loading(tmp_path, monkeypatch):
    path, _ = write(tmp_path, kind="Q4_K")
    monkeypatch.setattr(loading, "_available_memory", lambda: 4 * 2**20)  # a machine with 4 MiB free
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert loading.load_model(path).dtype == "quantized"  # auto keeps it quantized rather than fail
    assert "float32 weights would take" in str(caught[0].message)
    with pytest.raises(ModelLoadError, match="in float32 needs .* GiB but only .* available; use dtype='native'"):
        loading.load_model(path, dtype="float32")


def _flat(model: nn.Module):
    from mlx.utils import tree_flatten

    return tree_flatten(model.parameters())


def test_header_reads_as_llama_cpps_reader_reads_it(tmp_path):
    """phasegpt's reader parses arrays its own faster way: the values must be the gguf package's."""
    meta = fx.gguf_metadata(LLAMA)
    meta.update({"test.floats": [0.5, -1.25, 3.0], "test.ints": [7, -3, 0], "test.words": ["", "ü", "a b"]})
    path, _ = write(tmp_path, meta=meta)
    theirs = {key: field.contents() for key, field in GGUFReader(path).fields.items() if not key.startswith("GGUF.")}
    ours = open_gguf(path).metadata
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        if isinstance(value, float):  # ours spells float32 scalars in their shortest form
            assert ours[key] == pytest.approx(value, rel=1e-6), key
        else:
            assert ours[key] == value and type(ours[key]) is type(value), key
    assert ours["test.words"] == ["", "ü", "a b"] and ours["tokenizer.ggml.tokens"] == fx.byte_level_vocab()[0]


# --- bad input --------------------------------------------------------------------------------------


@pytest.mark.parametrize("keep", [100, 3000, -1000], ids=["in-header", "in-metadata", "in-tensor-data"])
def test_truncated_k_quant_file(tmp_path, keep):
    path, _ = write(tmp_path, kind="Q4_K")
    path.write_bytes(path.read_bytes()[:keep])
    with pytest.raises(ModelLoadError, match="truncated or corrupt: download or convert it again") as error:
        load_gguf(path)
    assert str(path) in str(error.value)


def test_unknown_quantization_type(tmp_path):
    path, _ = write(tmp_path, kind="Q4_K")
    reader = GGUFReader(path, "r+")  # llama.cpp's reader can edit a header in place
    reader.tensors[3].field.parts[4][0] = 250  # the tensor's GGML type id
    reader.data.flush()
    del reader
    with pytest.raises(ModelLoadError, match=r"unknown quantization type .*upgrade it \(`pip install -U gguf`\) "
                                             r"or convert the model to Q4_K_M or Q8_0") as error:
        load_gguf(path)
    assert str(path) in str(error.value)


def test_type_phasegpt_does_not_read(tmp_path):
    # Q8_K is llama.cpp's intermediate for K-quant dot products, which no converter writes.
    path, _ = write(tmp_path, kinds={"blk.0.ffn_down.weight": "Q8_K", "blk.1.ffn_down.weight": "Q8_K"})
    with pytest.raises(ModelLoadError, match="unsupported GGUF quantization Q8_K in tensor blk.0.ffn_down.weight "
                                             r"\(and 1 more\) of .*re-quantize it with llama.cpp's llama-quantize"):
        load_gguf(path)


def test_unmapped_architecture(tmp_path):
    falcon = fx.Family("falcon", "falcon", LLAMA.layer)
    path, _ = write(tmp_path, falcon)
    with pytest.raises(ModelLoadError, match="unsupported GGUF architecture falcon in .*tiny.gguf "
                                             r"\(phasegpt reads llama, mistral, qwen2, qwen3, gemma2, gemma3, phi3\); "
                                             "use an MLX folder"):
        load_gguf(path)


def test_shapes_that_disagree_with_the_metadata(tmp_path):
    meta = fx.gguf_metadata(LLAMA)
    meta["llama.feed_forward_length"] = 1024  # the tensors hold 512
    path, _ = write(tmp_path, meta=meta)
    with pytest.raises(ModelLoadError) as error:
        load_gguf(path)
    message = str(error.value)
    assert "does not fit a llama model built from its own metadata" in message and str(path) in message
    assert "wrong shape: blk.0.ffn_gate.weight 512x256 (the metadata needs 1024x256)" in message
    assert "blk.1.ffn_down.weight 256x512 (the metadata needs 256x1024)" in message
    assert message.endswith("download or convert it again")


def test_missing_and_leftover_tensors_listed_together(tmp_path):
    extra = {"blk.0.attn_rot_embd.weight": np.ones(8, np.float32)}
    path, _ = write(tmp_path, drop=("blk.1.ffn_up.weight", "output_norm.weight"), extra=extra)
    with pytest.raises(ModelLoadError) as error:
        load_gguf(path)
    message = str(error.value)
    assert "missing: blk.1.ffn_up.weight, output_norm.weight" in message
    assert "unexpected: blk.0.attn_rot_embd.weight" in message and str(path) in message


def test_not_a_gguf_and_missing_file(tmp_path):
    text = tmp_path / "notes.gguf"
    text.write_text("just some text, not a model\n")
    with pytest.raises(ModelLoadError, match="not a readable GGUF"):
        load_gguf(text)
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    with pytest.raises(ModelLoadError, match="not a readable GGUF"):
        load_gguf(empty)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_gguf(tmp_path / "absent.gguf")
    with pytest.raises(ValueError, match="unknown GGUF dtype 'int8'"):
        load_gguf(text, dtype="int8")
