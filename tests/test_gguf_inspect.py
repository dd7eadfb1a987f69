"""``phasegpt inspect`` and phasegpt.gguf.summary on tiny files written here: the header only, no weights."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from phasegpt.cli import cli
from phasegpt.gguf import quants
from phasegpt.gguf import load_gguf
from phasegpt.gguf.reader import open_gguf
from phasegpt.gguf.summary import summarize, weights_bytes
from tests import gguf_fixtures as fx

GEMMA3 = fx.FAMILIES["gemma3"]


@pytest.fixture()
def mixed(tmp_path):
    """A gemma3 file without a chat template: Q8_0 embedding, Q4_K attention output, Q6_K the rest."""
    meta = fx.gguf_metadata(GEMMA3)
    del meta["tokenizer.chat_template"]
    path = tmp_path / "mixed.gguf"
    kinds = {"token_embd.weight": "Q8_0", **{f"blk.{i}.attn_output.weight": "Q4_K" for i in range(GEMMA3.layers)}}
    fx.write_gguf(path, GEMMA3, fx.hf_weights(GEMMA3), kind="Q6_K", kinds=kinds, meta=meta)
    return path


def test_summary_of_a_mixed_file(mixed):
    s = summarize(mixed)
    assert (s.architecture, s.loads_as, s.problem, s.context_length, s.tokenizer) == ("gemma3", "gemma3_text", None,
                                                                                      512, "gpt2")
    assert list(s.types) == ["Q6_K", "Q4_K", "Q8_0", "F32"]  # by parameters, largest first
    assert s.types["Q4_K"] == {"tensors": 6, "parameters": 6 * fx.HIDDEN * 8 * fx.HEAD_DIM}
    assert s.chat_template == "none in the file; phasegpt uses its gemma template"
    assert s.native == {"Q6_K": "6-bit affine, groups of 64 (re-quantized)", "Q8_0": "8-bit affine, groups of 32",
                        "Q4_K": "4-bit affine, groups of 64 (re-quantized)"}
    assert s.memory["float32"] == 4 * s.parameters and s.memory["float16"] == 2 * s.parameters
    assert s.memory["native"] < s.memory["float16"] and s.file_bytes == mixed.stat().st_size


def test_estimated_memory_is_what_loading_takes(mixed):
    from mlx.utils import tree_flatten

    file = open_gguf(mixed)
    for dtype in ("float32", "native"):
        loaded = load_gguf(file, dtype=dtype)
        assert weights_bytes(file, dtype) == sum(w.nbytes for _, w in tree_flatten(loaded.model.parameters()))


def test_summary_decodes_no_tensor(mixed, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("inspect decoded a tensor")

    monkeypatch.setattr(quants, "load", refuse)
    assert summarize(mixed).loads_as == "gemma3_text"


def test_cli_inspect(mixed):
    result = CliRunner().invoke(cli, ["inspect", str(mixed)])
    assert result.exit_code == 0, result.output
    lines = dict(line.split(None, 1) if not line.startswith(("memory", "chat", "context", "loads"))
                 else (" ".join(line.split()[:2]), line.split(None, 2)[2]) for line in result.output.splitlines())
    assert lines["architecture"].strip() == "gemma3"
    assert lines["loads as"].strip() == "mlx-lm gemma3_text"
    assert lines["context length"].strip() == "512"
    assert "Q6_K" in lines["quantization"] and "Q4_K" in lines["quantization"]
    assert lines["chat template"].strip() == "none in the file; phasegpt uses its gemma template"
    assert lines["memory float32"].startswith("0.0") and "GiB" in lines["memory native"]
    data = json.loads(CliRunner().invoke(cli, ["inspect", "--json", str(mixed)]).output)
    assert data["loads_as"] == "gemma3_text" and data["path"] == str(mixed) and data["memory"]["native"] > 0


def test_cli_inspect_of_files_phasegpt_cannot_load(tmp_path):
    falcon = fx.Family("falcon", "falcon", fx.FAMILIES["llama"].layer)
    path = tmp_path / "falcon.gguf"
    fx.write_gguf(path, falcon, fx.hf_weights(falcon))
    result = CliRunner().invoke(cli, ["inspect", str(path)])
    assert result.exit_code == 0 and "cannot load: unsupported GGUF architecture falcon" in result.output
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(path.read_bytes()[:200])
    result = CliRunner().invoke(cli, ["inspect", str(broken)])
    assert result.exit_code == 1 and "is not a readable GGUF file" in result.output
    assert "truncated or corrupt: download or convert it again" in result.output
