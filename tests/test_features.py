"""Feature extraction for head training (``train.features.extract``) on the tiny model: the cache, and a
stopped extraction that a rerun finishes."""

from __future__ import annotations

import numpy as np
import pytest

from phasegpt.train import features
from phasegpt.train.data import Example
from phasegpt.train.features import cache_file, extract

LAYERS = [0, 1]


def examples(n: int) -> list[Example]:
    return [Example(prompt=f"request {i}: " + "tell me more " * (1 + i % 5), label="answer") for i in range(n)]


def test_a_stopped_extraction_keeps_what_it_saved_and_a_rerun_computes_only_the_rest(tiny_model, monkeypatch):
    rows = examples(40)
    whole = extract(tiny_model, rows, LAYERS, batch_size=4, use_cache=False, progress=False)
    monkeypatch.setattr(features, "SAVE_EVERY", 0.0)  # save at every exchange of results
    real, done = features._pooled, []

    def stop_after(n):
        def pooled(model, parts, layers):
            if len(done) == n:
                raise KeyboardInterrupt  # as Ctrl-C would, in the middle of a step
            done.append(sum(len(p) for p in parts))
            return real(model, parts, layers)
        return pooled

    monkeypatch.setattr(features, "_pooled", stop_after(3))
    with pytest.raises(KeyboardInterrupt):
        extract(tiny_model, rows, LAYERS, batch_size=4, progress=False)
    saved = features._load(cache_file(tiny_model, LAYERS))
    assert 0 < len(saved) < len(rows)  # the first exchange was saved, the stopped step was not

    done.clear()
    monkeypatch.setattr(features, "_pooled", stop_after(10**6))
    again = extract(tiny_model, rows, LAYERS, batch_size=4, progress=False)
    assert sum(done) == len(rows) - len(saved)  # only what the stopped run had not saved
    keys = [e.key for e in rows]
    for i, k in enumerate(keys):
        if k in saved:  # same plan, same batches: the same numbers, bit for bit
            assert np.array_equal(again[i], whole[i])
    # recomputed rows sit in other batches now (other padding), so equal to float rounding only
    np.testing.assert_allclose(again, whole, rtol=1e-4, atol=1e-4)
    assert len(features._load(cache_file(tiny_model, LAYERS))) == len(rows)
