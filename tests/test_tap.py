"""The tap records the model's own residual stream and changes nothing it computes."""

from __future__ import annotations

import mlx.core as mx
import pytest
from mlx_lm import generate as mlx_generate
from mlx_lm.generate import generate_step

import phasegpt
from phasegpt.tap import tapped


def _explicit_hidden(model, ids):
    """Residual stream after every block, by an explicit loop (the reference)."""
    inner = model.model
    h = inner.embed_tokens(mx.array([ids]))
    out = []
    for layer in inner.layers:
        h = layer(h, "causal")
        out.append(h)
    mx.eval(out)
    return out


def test_tap_records_exact_hidden_states_and_restores_layers(tiny_model):
    model = tiny_model.loaded.model
    before = list(model.layers)
    ids = tiny_model.encode("What is the capital of France?")
    with tapped(model, [0, -1], budget=len(ids)) as taps:
        model(mx.array([ids]))
        hidden = taps.hidden()
    ref = _explicit_hidden(model, ids)
    assert set(hidden) == {0, 2}
    assert mx.array_equal(hidden[0], ref[0]).item() and mx.array_equal(hidden[2], ref[2]).item()
    assert all(a is b for a, b in zip(model.layers, before))


def test_tap_passes_layer_attributes_through(tiny_model):
    model = tiny_model.loaded.model
    with tapped(model, [1], budget=1):
        assert model.layers[1].use_sliding is False  # mlx-lm's llama reads this off each layer
        assert model.layers[1].self_attn is model.model.layers[1].layer.self_attn


def test_chunked_prefill_is_stitched_to_the_full_prompt(tiny_model):
    model = tiny_model.loaded.model
    ids = tiny_model.encode("Tell me a story about a dog and a cat, please.")
    with tapped(model, [1], budget=len(ids)) as taps:
        gen = generate_step(mx.array(ids), model, max_tokens=3, prefill_step_size=4)
        list(gen)
        hidden = taps.hidden()[1]
    ref = _explicit_hidden(model, ids)[1]
    assert hidden.shape == ref.shape  # decode steps are not recorded
    assert mx.allclose(hidden, ref, atol=1e-5).item()


@pytest.mark.parametrize("with_adapter", [False, True])
def test_tapped_greedy_generation_is_token_identical(tiny_dir, tiny_adapter, with_adapter, tmp_path):
    from tests.conftest import random_head

    adapter = tiny_adapter if with_adapter else None
    base = phasegpt.load(tiny_dir, adapter=adapter)
    model = phasegpt.load(tiny_dir, adapter=adapter, head=random_head(base, tmp_path / "h"))
    for prompt in ["What is the capital of France?", "How do I bake bread?"]:
        ids = model.encode(prompt)
        ours = [c.token for c in model.stream(prompt, max_tokens=24) if c.token is not None]
        ref = []
        for tok, _ in generate_step(mx.array(ids), base.loaded.model, max_tokens=24):
            ref.append(tok)
            if tok in base.tokenizer.eos_token_ids:  # stream_generate stops at (and yields) EOS
                break
        assert ours == ref
        text = model.generate(prompt, max_tokens=24).text
        assert text == mlx_generate(base.loaded.model, base.tokenizer, ids, max_tokens=24)


def test_bad_layer_index(tiny_model):
    with pytest.raises(ValueError, match="3 layers"):
        with tapped(tiny_model.loaded.model, [5], budget=1):
            pass
