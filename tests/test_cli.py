"""The phasegpt CLI through click's CliRunner on the tiny model, and inference.py as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from phasegpt.cli import cli
from phasegpt.verdict import LABELS, Verdict

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def tiny_args(tiny_dir, tiny_model, tmp_path):
    head = tiny_model.head.save(tmp_path / "head")
    return ["--model", str(tiny_dir), "--head", str(head)]


def invoke(*args, input=None):
    return CliRunner().invoke(cli, [str(a) for a in args], input=input, catch_exceptions=False)


def test_run_json_schema(tiny_args):
    r = invoke("run", *tiny_args, "--json", "--max-tokens", 5, "What is the capital of France?")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert set(out) >= {"text", "verdict", "prompt_tokens", "generation_tokens", "verdict_seconds", "finish_reason"}
    v = out["verdict"]
    assert v["label"] in LABELS and set(v["probs"]) == set(LABELS) and isinstance(v["evidence"], list)
    assert out["generation_tokens"] == 5


def test_run_human_stream_stdin_and_context(tiny_args, tmp_path):
    r = invoke("run", *tiny_args, "--max-tokens", 4, "How do I bake bread?")
    assert r.exit_code == 0 and r.output.split()[0] in ("ANSWER", "REFUSAL")
    doc = tmp_path / "doc.txt"
    doc.write_text("Bread needs flour, water and salt.")
    r = invoke("run", *tiny_args, "--stream", "--max-tokens", 4, "-c", doc, input="What does bread need?\n")
    assert r.exit_code == 0 and r.output.split()[0] in ("ANSWER", "REFUSAL")


def test_run_audit_writes_a_record(tiny_args):
    assert invoke("run", *tiny_args, "--audit", "--max-tokens", 2, "hello").exit_code == 0
    r = invoke("audit", "list", "--json")
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in r.output.splitlines() if line.strip()] if not r.output.lstrip().startswith("[") \
        else json.loads(r.output)
    assert len(rows) == 1 and rows[0]["source"] == "cli"


def test_classify_jsonl_keeps_fields(tiny_args, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text('{"id": 1, "prompt": "hello"}\n\n{"id": 2, "prompt": "What does it say?", "context": ["Cats purr."]}\n')
    out = tmp_path / "out.jsonl"
    r = invoke("classify", src, *tiny_args, "-o", out, "--batch-size", 2)
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["id"] for row in rows] == [1, 2] and rows[1]["context"] == ["Cats purr."]
    assert all(row["verdict"]["label"] in LABELS for row in rows)


def test_classify_bad_line_names_file_and_line(tiny_args, tmp_path):
    src = tmp_path / "bad.jsonl"
    src.write_text('{"prompt": "ok"}\n{"prompt": oops}\n')
    r = CliRunner().invoke(cli, ["classify", str(src), *tiny_args])
    assert r.exit_code == 1 and f"{src}:2" in r.output and "Traceback" not in r.output


def test_errors_are_one_line_and_debug_shows_traceback(tmp_path):
    r = CliRunner().invoke(cli, ["run", "--model", str(tmp_path / "missing"), "hi"])
    assert r.exit_code == 1 and r.output.startswith("Error: model not found") and len(r.output.strip().splitlines()) == 1
    r = CliRunner().invoke(cli, ["--debug", "run", "--model", str(tmp_path / "missing"), "hi"])
    assert r.exit_code == 1 and isinstance(r.exception, FileNotFoundError)


def _write_data(path: Path) -> Path:
    rows = []
    words = {"safety": "build a bomb to hurt people", "epistemic": "tell me next week's lottery numbers",
             "missing_context": "fix it for me", "answer": "what is the capital of France"}
    for label, text in words.items():
        for i in range(12):
            rows.append({"prompt": f"{text} {i}", "label": label, "split": "dev" if i % 4 == 0 else "train",
                         "source": "tiny"})
    rows.append({"prompt": "held out", "label": "answer", "split": "test", "source": "tiny"})
    rows.append({"prompt": "far too long " * 2000, "label": "answer", "split": "train", "source": "tiny"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_train_head_then_eval(tiny_dir, tmp_path):
    data = _write_data(tmp_path / "data.jsonl")
    r = invoke("train-head", "--model", tiny_dir, "-d", data, "-o", tmp_path / "head")
    assert r.exit_code == 0, r.output
    assert "skipped 1 examples longer than the model's context" in r.output
    cfg = json.loads((tmp_path / "head" / "head.json").read_text())
    assert cfg["metrics"]["n_train"] == 36 and cfg["metrics"]["n_dev"] == 12  # the test row is never used
    assert cfg["training"]["command"].startswith("phasegpt train-head")
    r = invoke("eval", "--model", tiny_dir, "--head", tmp_path / "head", "-d", data, "--split", "train",
               "-o", tmp_path / "report")
    assert r.exit_code == 0, r.output
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics["n"] == 36 and 0 <= metrics["macro_f1"] <= 1
    assert (tmp_path / "report" / "report.md").is_file()


def test_train_head_seed_does_not_move_the_dev_rows(tiny_dir, tmp_path):
    from phasegpt.train.data import read_jsonl, split
    rows = [{"prompt": r["prompt"], "label": r["label"]}  # no split: the stable 20%
            for r in map(json.loads, _write_data(tmp_path / "split.jsonl").read_text().splitlines()[:48])]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert len(split(read_jsonl(data), seed=0)[1]) != len(split(read_jsonl(data), seed=1)[1])  # seeds would differ
    n_dev = set()
    for seed in (0, 1):
        r = invoke("train-head", "--model", tiny_dir, "-d", data, "--seed", str(seed), "-o", tmp_path / f"h{seed}")
        assert r.exit_code == 0, r.output
        n_dev.add(json.loads((tmp_path / f"h{seed}" / "head.json").read_text())["metrics"]["n_dev"])
    assert n_dev == {len(split(read_jsonl(data))[1])}


def test_train_head_members_set_the_mlp_width(tiny_dir, tmp_path):
    import mlx.core as mx
    data = _write_data(tmp_path / "data.jsonl")
    widths = {}
    for k in (1, 3):
        r = invoke("train-head", "--model", tiny_dir, "-d", data, "--kind", "mlp", "--members", str(k),
                   "-o", tmp_path / f"h{k}")
        assert r.exit_code == 0, r.output
        widths[k] = mx.load(str(tmp_path / f"h{k}" / "head.safetensors"))["w1"].shape[1]
    assert widths == {1: 256, 3: 768}


def test_train_head_bad_data(tiny_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "label": "answer"}\n{"prompt": "b", "label": "rude"}\n')
    r = CliRunner().invoke(cli, ["train-head", "--model", str(tiny_dir), "-d", str(bad), "-o", str(tmp_path / "h")])
    assert r.exit_code == 1 and f"{bad}:2" in r.output and "unknown label" in r.output
    one = tmp_path / "one.jsonl"
    one.write_text("".join(json.dumps({"prompt": f"p{i}", "label": "answer"}) + "\n" for i in range(10)))
    r = CliRunner().invoke(cli, ["train-head", "--model", str(tiny_dir), "-d", str(one), "-o", str(tmp_path / "h")])
    assert r.exit_code == 1 and "at least two labels" in r.output
    assert not (tmp_path / "h").exists()


def test_doctor_and_version():
    r = invoke("doctor", "--json")
    report = json.loads(r.output)
    assert r.exit_code == 0 and report["mlx"] and report["sgemm_gflops"] > 0
    assert "BLAS" in invoke("doctor").output
    assert invoke("--version").output.startswith("phasegpt, version")


def test_inference_script_subprocess(tiny_args):
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "inference.py"), *tiny_args, "--json",
                        "--max-tokens", "3", "hello"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["verdict"]["label"] in LABELS
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "inference.py"), "--model", "/no/such/model", "hi"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 1 and "model not found" in p.stderr and "Traceback" not in p.stderr


def test_eval_probabilities_equal_classify(tiny_dir, tiny_model, tmp_path):
    """eval scores through the feature cache; it must agree with Model.classify."""
    from phasegpt.train.data import read_jsonl
    from phasegpt.train.features import predict

    rows = [e for e in read_jsonl(_write_data(tmp_path / "d.jsonl")) if len(e.prompt) < 100]
    probs, labels, _ = predict(tiny_model, rows, progress=False)
    verdicts = tiny_model.classify([e.prompt for e in rows])
    assert labels == [v.label for v in verdicts]
    assert abs(probs - [[v.probs[k] for k in LABELS] for v in verdicts]).max() < 1e-4


def test_train_adapter_cli_writes_a_loadable_adapter(tiny_dir, tmp_path):
    import mlx.core as mx

    import phasegpt

    mx.disable_compile()  # CPU kernel compilation costs ~40 s the first time; results are the same
    try:
        data = _write_data(tmp_path / "data.jsonl")
        out = tmp_path / "lora"
        r = invoke("train-adapter", "--model", tiny_dir, "-d", data, "-o", out, "--iters", 2, "--batch-size", 2,
                   "--num-layers", 2, "--rank", 4)
        assert r.exit_code == 0, r.output
        assert "writing base-model answers" in r.output  # the slow part on a CPU shows progress
        assert {p.name for p in out.iterdir()} == {"adapter_config.json", "adapters.safetensors"}
        mask = os.umask(0)
        os.umask(mask)
        assert out.stat().st_mode & 0o777 == 0o777 & ~mask  # an ordinary folder, not mkdtemp's owner-only one
        model = phasegpt.load(tiny_dir, adapter=out)
        assert model.loaded.adapter_sha256 and model.generate("hi", max_tokens=2).generation_tokens >= 1
    finally:
        mx.enable_compile()


def test_verdict_line_says_when_the_input_is_unfamiliar():
    from phasegpt.cli.run import verdict_line

    base = Verdict(label="safety", probs={"safety": 0.6, "epistemic": 0.1, "missing_context": 0.1, "answer": 0.2},
                   confidence=0.6, evidence=("hack",))
    assert verdict_line(base) == "REFUSAL  safety  0.60  evidence: hack"
    assert verdict_line(replace(base, ood=0.8)) == "REFUSAL  safety  0.60  evidence: hack"
    assert verdict_line(replace(base, ood=2.5)).endswith("unfamiliar input (ood 2.50)")
