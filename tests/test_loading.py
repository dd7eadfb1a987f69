"""phasegpt.load on tiny folders: dtype policy, adapters, fingerprints, bad input."""

from __future__ import annotations

import json
import shutil

import mlx.core as mx
import mlx.nn as nn
import pytest
from mlx.utils import tree_flatten
from mlx_lm import load as mlx_load

import phasegpt
from phasegpt.errors import MismatchError, ModelLoadError
from phasegpt.loading import load_model
from tests.conftest import write_adapter
from tests.tiny import make_tiny_model_dir


def _logits(model, ids=(1, 5, 9, 30, 7)):
    out = model(mx.array([list(ids)]))
    mx.eval(out)
    return out


def test_folder_loads_in_float32_on_cpu(tiny_dir):
    lm = load_model(tiny_dir)
    assert lm.dtype == "float32"
    assert {w.dtype for _, w in tree_flatten(lm.model.parameters())} == {mx.float32}
    assert lm.name == tiny_dir.name and len(lm.fingerprint) == 16


def test_quantized_folder_is_dequantized_and_matches_quantized_logits(tiny_quant_dir):
    q = load_model(tiny_quant_dir, dtype="native")
    f = load_model(tiny_quant_dir)
    assert q.dtype == "quantized" and f.dtype == "float32"
    assert any(isinstance(m, nn.QuantizedLinear) for _, m in q.model.named_modules())
    assert not any(isinstance(m, nn.QuantizedLinear) for _, m in f.model.named_modules())
    assert mx.allclose(_logits(q.model), _logits(f.model), atol=1e-3).item()
    assert q.fingerprint == f.fingerprint  # computed before the dtype change


def test_fingerprint_tells_bases_apart(tmp_path, tiny_dir):
    other = make_tiny_model_dir(tmp_path / "other", num_layers=3, seed=7)
    assert load_model(other).fingerprint != load_model(tiny_dir).fingerprint
    assert load_model(tiny_dir).fingerprint == load_model(tiny_dir).fingerprint


def test_adapter_matches_mlx_lm_and_changes_logits(tiny_dir, tiny_adapter):
    ours = load_model(tiny_dir, adapter=tiny_adapter)
    ref, _ = mlx_load(str(tiny_dir), adapter_path=str(tiny_adapter))
    base = load_model(tiny_dir)
    assert mx.allclose(_logits(ours.model), _logits(ref), atol=1e-5).item()
    assert not mx.allclose(_logits(ours.model), _logits(base.model), atol=1e-3).item()
    assert ours.adapter_sha256 and len(ours.adapter_sha256) == 64


def test_adapter_unfused_on_quantized_base(tiny_quant_dir, tmp_path):
    adapter = write_adapter(tiny_quant_dir, tmp_path / "a")
    lm = load_model(tiny_quant_dir, adapter=adapter, dtype="native")
    kinds = {type(m).__name__ for _, m in lm.model.named_modules()}
    assert "LoRALinear" in kinds and "QuantizedLinear" in kinds


def test_fuse_gives_same_logits_without_lora_layers(tiny_dir, tiny_adapter):
    unfused = load_model(tiny_dir, adapter=tiny_adapter)
    fused = load_model(tiny_dir, adapter=tiny_adapter, fuse=True)
    assert not any(type(m).__name__ == "LoRALinear" for _, m in fused.model.named_modules())
    assert mx.allclose(_logits(unfused.model), _logits(fused.model), atol=1e-4).item()


def test_fuse_refuses_quantized_weights(tiny_quant_dir, tmp_path):
    adapter = write_adapter(tiny_quant_dir, tmp_path / "a")
    with pytest.raises(ValueError, match="unquantized"):
        load_model(tiny_quant_dir, adapter=adapter, fuse=True, dtype="native")


def test_adapter_for_another_base_lists_every_mismatch(tmp_path, tiny_dir):
    wide = make_tiny_model_dir(tmp_path / "wide", num_layers=3, hidden_size=96, num_heads=4)
    adapter = write_adapter(wide, tmp_path / "wide-lora")
    with pytest.raises(MismatchError) as e:
        load_model(tiny_dir, adapter=adapter)
    msg = str(e.value)
    assert msg.count("does not match") >= 4  # q and v projections of two layers, each lora_a/lora_b
    assert "trained on this base" in msg


def test_adapter_missing_keys_is_a_mismatch(tmp_path, tiny_dir, tiny_adapter):
    partial = tmp_path / "partial"
    shutil.copytree(tiny_adapter, partial)
    weights = mx.load(str(partial / "adapters.safetensors"))
    dropped = sorted(weights)[0]
    del weights[dropped]
    mx.save_safetensors(str(partial / "adapters.safetensors"), weights)
    with pytest.raises(MismatchError, match="missing"):
        load_model(tiny_dir, adapter=partial)


def test_bad_paths(tmp_path, tiny_dir):
    with pytest.raises(FileNotFoundError):
        phasegpt.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="config.json"):
        load_model(tmp_path / "empty")
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ModelLoadError, match="gguf"):
        load_model(tmp_path / "notes.txt")
    with pytest.raises(FileNotFoundError, match="adapter"):
        load_model(tiny_dir, adapter=tmp_path / "no-adapter")
    with pytest.raises(ValueError, match="dtype"):
        load_model(tiny_dir, dtype="int3")


def test_truncated_safetensors_names_the_file(tmp_path, tiny_dir):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_dir, broken)
    w = broken / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    with pytest.raises(ModelLoadError, match="corrupt or truncated"):
        load_model(broken)


def test_offline_repo_id_names_repo_and_fix(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as e:
        load_model("phasegpt-tests/no-such-model-4bit")
    assert "phasegpt-tests/no-such-model-4bit" in str(e.value) and "hf download" in str(e.value)


def test_mistral_7b_config_parses_into_model_args():
    """The real Mistral-7B-Instruct-v0.3 config.json values, without weights."""
    from mlx_lm.utils import _get_classes

    config = {
        "architectures": ["MistralForCausalLM"], "model_type": "mistral", "hidden_size": 4096,
        "intermediate_size": 14336, "num_attention_heads": 32, "num_hidden_layers": 32,
        "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "rope_theta": 1000000.0, "sliding_window": None,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16", "vocab_size": 32768,
        "max_position_embeddings": 32768, "head_dim": 128, "bos_token_id": 1, "eos_token_id": 2,
        "quantization": {"group_size": 64, "bits": 4},
    }
    model_cls, args_cls = _get_classes(json.loads(json.dumps(config)))
    args = args_cls.from_dict(config)
    assert (args.hidden_size, args.num_hidden_layers, args.num_attention_heads) == (4096, 32, 32)
    assert (args.num_key_value_heads, args.vocab_size, args.rope_theta) == (8, 32768, 1e6)
    model = model_cls(args)  # lazy arrays: nothing is allocated until evaluated
    shapes = dict(tree_flatten(model.parameters()))
    assert shapes["model.layers.0.self_attn.k_proj.weight"].shape == (1024, 4096)
    assert shapes["lm_head.weight"].shape == (32768, 4096) and len(model.layers) == 32
