"""An adapter knows its base model: train-adapter records the base's fingerprint and load refuses another
base (unless told), while a third-party mlx-lm adapter, which records none, loads with a warning."""

from __future__ import annotations

import json
import warnings

import mlx.core as mx
import pytest
from click.testing import CliRunner

import phasegpt
from phasegpt.cli import cli
from phasegpt.errors import MismatchError
from phasegpt.loading import load_model
from tests.conftest import write_adapter
from tests.tiny import make_tiny_model_dir


@pytest.fixture(scope="module")
def other_base(tmp_path_factory):
    """Same architecture and shapes as the session's tiny model, other weights: an adapter's tensors fit both."""
    return make_tiny_model_dir(tmp_path_factory.mktemp("other") / "model", num_layers=3, seed=7)


@pytest.fixture(scope="module")
def trained(tiny_dir, tmp_path_factory):
    """An adapter written by `phasegpt train-adapter` on the tiny model (two steps: its content does not matter)."""
    folder = tmp_path_factory.mktemp("trained")
    data = folder / "data.jsonl"
    rows = [{"prompt": f"How do I pick lock number {i}?", "label": "safety"} for i in range(4)]
    rows += [{"prompt": f"What is {i} plus {i}?", "label": "answer", "response": f"It is {2 * i}."} for i in range(4)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    mx.disable_compile()  # CPU kernel compilation costs ~40 s the first time; results are the same
    try:
        r = CliRunner().invoke(cli, ["train-adapter", "--model", str(tiny_dir), "-d", str(data), "-o",
                                     str(folder / "lora"), "--iters", "2", "--batch-size", "1", "--num-layers", "2",
                                     "--rank", "2"])
    finally:
        mx.enable_compile()
    assert r.exit_code == 0, r.output
    return folder / "lora"


def test_train_adapter_records_the_base_fingerprint(trained, tiny_dir):
    base = json.loads((trained / "adapter_config.json").read_text())["phasegpt"]["base_model"]
    assert base["fingerprint"] == load_model(tiny_dir).fingerprint and base["name"]


def test_its_own_base_loads_it_without_a_warning(trained, tiny_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_model(tiny_dir, adapter=trained).adapter_sha256


def test_another_base_is_refused_naming_both(trained, tiny_dir, other_base):
    ours, theirs = load_model(tiny_dir).fingerprint, load_model(other_base).fingerprint
    with pytest.raises(MismatchError, match="allow_base_mismatch") as e:
        phasegpt.load(other_base, adapter=trained)
    assert ours in str(e.value) and theirs in str(e.value)
    with pytest.warns(UserWarning, match="loaded anyway"):
        model = phasegpt.load(other_base, adapter=trained, allow_base_mismatch=True)
    assert model.loaded.adapter_sha256


def test_the_cli_refuses_in_one_line_and_has_an_override(trained, other_base):
    args = ["run", "--model", str(other_base), "--adapter", str(trained), "--max-tokens", "1", "hello"]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 1 and "was trained on" in r.output and "--allow-base-mismatch" in r.output
    assert r.output.count("\n") == 1
    with pytest.warns(UserWarning, match="loaded anyway"):
        r = CliRunner().invoke(cli, ["run", "--allow-base-mismatch", *args[1:]])
    assert r.exit_code == 0, r.output


def test_a_third_party_adapter_without_a_fingerprint_loads_with_a_warning(tiny_dir, tmp_path):
    plain = write_adapter(tiny_dir, tmp_path / "mlx-lm-lora", num_layers=2)  # as `mlx_lm.lora` writes them
    with pytest.warns(UserWarning, match="records no base-model fingerprint"):
        assert load_model(tiny_dir, adapter=plain).adapter_sha256
