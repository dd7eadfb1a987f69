"""Bad input never crashes: one clear error naming the problem, before any model is loaded."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from phasegpt.cli import cli

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def tiny_args(tiny_dir, tiny_model, tmp_path):
    head = tiny_model.head.save(tmp_path / "head")
    return ["--model", str(tiny_dir), "--head", str(head)]


def run(*args, input=None):
    return CliRunner().invoke(cli, ["run", *map(str, args)], input=input)


# -- bytes that are not UTF-8 -----------------------------------------------------------------


def test_non_utf8_stdin_is_one_clear_line(tiny_args):
    r = run(*tiny_args, "--max-tokens", 2, input=b"\xff hack wifi\n")
    assert r.exit_code == 1 and r.output.count("\n") == 1, r.output
    assert r.output.startswith("Error: stdin is not UTF-8 text (byte 0xff at offset 0)")


def test_non_utf8_argument_is_one_clear_line(tiny_args):
    # How Python hands a shell argument with the byte 0xff to the program (surrogateescape).
    r = run(*tiny_args, "--max-tokens", 2, b"\xff hack wifi".decode("utf-8", "surrogateescape"))
    assert r.exit_code == 1 and r.output.count("\n") == 1, r.output
    assert "PROMPT argument is not valid UTF-8" in r.output and "0xff" in r.output


def test_non_utf8_stdin_through_the_real_entry_point():
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "inference.py")], input=b"\xff hack wifi\n",
                       capture_output=True, timeout=120)
    err = p.stderr.decode()
    assert p.returncode == 1 and "Traceback" not in err and err.count("\n") == 1, err
    assert "not UTF-8" in err


def test_the_api_names_text_that_is_not_valid_unicode(tiny_model):
    with pytest.raises(ValueError, match="the prompt is not valid UTF-8 text"):
        tiny_model.classify(["\udcff hack wifi"])
    with pytest.raises(ValueError, match="context document 0 is not valid UTF-8"):
        tiny_model.classify(["hello"], contexts=[["caf\udce9"]])


# -- option and argument checks -------------------------------------------------------------------


@pytest.mark.parametrize(("option", "value"), [("--temp", "-1"), ("--max-tokens", "-1"), ("--max-tokens", "0"),
                                                ("--top-p", "0"), ("--top-p", "1.5"), ("--seed", "-3")])
def test_cli_rejects_bad_sampling_options(tiny_args, option, value):
    r = run(*tiny_args, option, value, "hello")
    assert r.exit_code == 2 and f"Invalid value for '{option}'" in r.output


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"max_tokens": -1}, "max_tokens must be a whole number >= 1"),
    ({"max_tokens": "5"}, "max_tokens must be a whole number >= 1, not '5'"),
    ({"max_tokens": True}, "max_tokens"),
    ({"temp": -1}, "temp must be a number >= 0"),
    ({"temp": float("nan")}, "temp"),
    ({"top_p": 0}, "top_p must be a number in"),
    ({"seed": -1}, "seed must be a whole number >= 0"),
])  # fmt: skip
def test_api_rejects_bad_sampling_options_at_the_call(tiny_model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_model.generate("hello", **kwargs)
    with pytest.raises(ValueError, match=message):
        tiny_model.stream("hello", **kwargs)  # at the call, not at the first next()


def test_classify_rejects_a_string_of_contexts(tiny_model):
    with pytest.raises(ValueError, match="contexts must be a list with one entry per prompt"):
        tiny_model.classify(["a", "b"], contexts="ab")  # two characters: two "documents" before
    with pytest.raises(ValueError, match="contexts must be a list"):
        tiny_model.classify(["a"], contexts={"id": "d", "text": "doc"})
    with pytest.raises(ValueError, match="batch_size must be a whole number >= 1, not '5'"):
        tiny_model.classify(["a"], batch_size="5")
    assert len(tiny_model.classify(["a", "b"], contexts=["doc a", None])) == 2  # one document each still works


def test_the_prompt_is_checked_before_the_model_loads(tmp_path):
    missing = tmp_path / "no-such-model"  # loading it would fail: the prompt's error must come first
    r = run("--model", missing, input=b"   \n")
    assert r.exit_code == 1 and "the prompt is empty" in r.output
    r = run("--model", missing, input=b"\xfe\n")
    assert r.exit_code == 1 and "not UTF-8" in r.output
    doc = tmp_path / "doc.txt"
    doc.write_bytes(b"caf\xe9")
    r = run("--model", missing, "-c", doc, "question")
    assert r.exit_code == 1 and "is not UTF-8 text" in r.output
    r = run("--model", missing, "a fine question")
    assert r.exit_code == 1 and "model not found" in r.output  # only a good request gets that far
