"""Tests for `phasegpt audit ...`: every command through click's CliRunner on a temp log."""

from __future__ import annotations

import json
import sqlite3

import pytest
from click.testing import CliRunner

from phasegpt.audit import AuditLog
from phasegpt.audit.keys import read_key
from phasegpt.audit.migrations import GENESIS, keyed_record_hash
from phasegpt.cli.audit import audit
from phasegpt.verdict import LABELS, Verdict

RECORD_KEYS = {
    "id", "created_at", "duration", "source", "model", "model_fingerprint", "adapter_sha256", "head_sha256",
    "layers", "thresholds", "label", "probs", "confidence", "evidence", "tag", "verdict_source", "prompt_hash",
    "response_hash", "contexts", "prompt", "response", "metadata", "version", "prev_id", "prev_hash", "hash",
    "ood", "evidence_hashes", "kind", "parent_id",
}  # fmt: skip


def verdict(label: str, model: str = "tiny-model", ood: float | None = None) -> Verdict:
    probs = {name: (0.85 if name == label else 0.05) for name in LABELS}
    return Verdict(label=label, probs=probs, confidence=0.85, model=model, layers=(2,), head_sha256="c" * 64, ood=ood)


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("PHASEGPT_HOME", str(tmp_path))
    return tmp_path


@pytest.fixture
def ids(home):
    """Six records: labels cycle through LABELS; the last one from another model."""
    with AuditLog() as log:
        out = [log.record(verdict(LABELS[i % 4], ood=0.25 * i), prompt=f"prompt {i}", source="cli") for i in range(5)]
        out.append(log.record(verdict("safety", model="other-model"), prompt="prompt 5"))
    return out


def run(*args: str, code: int = 0) -> str:
    result = CliRunner().invoke(audit, list(args))
    assert result.exit_code == code, result.output
    return result.output


def tamper(home, script: str) -> None:
    db = sqlite3.connect(home / "audit.db")
    db.executescript(script)
    db.close()


def test_path_defaults_to_phasegpt_home_and_honours_db(home, tmp_path):
    assert run("path").strip() == str(home / "audit.db")
    assert run("path", "--db", str(tmp_path / "x.db")).strip() == str(tmp_path / "x.db")


def test_status_without_and_with_a_log(home, ids):
    missing = home / "none.db"
    assert "No audit log" in run("status", "--db", str(missing))
    assert json.loads(run("status", "--db", str(missing), "--json")) == {"path": str(missing), "exists": False}
    assert not missing.exists()  # reading never creates a log
    text = run("status")
    assert "Records:    6" in text and "m001_initial" in text and str(home / "audit.db") in text
    info = json.loads(run("status", "--json"))
    assert info["exists"] and info["records"] == info["head_count"] == 6 and info["head_id"] == ids[-1]
    assert set(info) >= {"path", "key_path", "size_bytes", "migrations", "head_hash"} and info["size_bytes"] > 0


def test_list_text_json_filters_and_limit(ids):
    lines = run("list").splitlines()
    assert lines[0].split()[:3] == ["id", "time", "(UTC)"]
    assert [line.split()[0] for line in lines[1:]] == ids[::-1]  # newest first
    rows = json.loads(run("list", "--json"))
    assert [r["id"] for r in rows] == ids[::-1] and all(set(r) == RECORD_KEYS for r in rows)
    assert [r["ood"] for r in rows] == [None, 1.0, 0.75, 0.5, 0.25, 0.0]  # Verdict.ood, kept
    assert [r["id"] for r in json.loads(run("list", "--json", "-n", "2"))] == ids[:-3:-1]
    assert {r["label"] for r in json.loads(run("list", "--json", "--label", "safety"))} == {"safety"}
    assert len(json.loads(run("list", "--json", "--label", "safety"))) == 3
    assert [r["id"] for r in json.loads(run("list", "--json", "--model", "other-model"))] == [ids[-1]]
    assert len(json.loads(run("list", "--json", "--since", "1h", "--until", "2999-01-01"))) == 6
    assert "No records match" in run("list", "--since", "2999-01-01")


def test_show_text_json_and_unknown_id(ids):
    text = run("show", ids[1])
    assert f"id:                 {ids[1]}" in text and "epistemic" in text and "prompt_hash:" in text
    record = json.loads(run("show", ids[1], "--json"))
    assert set(record) == RECORD_KEYS and record["id"] == ids[1] and record["label"] == "epistemic"
    assert record["ood"] == 0.25 and "ood:                0.25" in text
    assert record["prompt"] is None and record["source"] == "cli"
    out = run("show", "NOPE", code=1)
    assert out.startswith("Error: no record NOPE") and out.count("\n") == 1


def test_stats_text_and_json(ids):
    info = json.loads(run("stats", "--json"))
    assert info["count"] == 6 and info["refusals"] == 5
    assert info["labels"] == {"safety": 3, "epistemic": 1, "missing_context": 1, "answer": 1}
    assert info["models"] == {"tiny-model": 5, "other-model": 1} and info["sources"] == {"cli": 5, "api": 1}
    assert json.loads(run("stats", "--json", "--model", "other-model"))["count"] == 1
    text = run("stats")
    assert "Records:  6 (5 refusals)" in text and "other-model" in text


def test_export_jsonl_stdout_file_and_json(home, ids):
    lines = run("export", "--jsonl").splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["id"] for r in records] == ids and all(set(r) == RECORD_KEYS for r in records)
    # The export and the key file re-check the chain, without the database.
    chain_key, prev = read_key(home / "audit.key").chain_key, GENESIS
    for r in records:
        fields = {k: v for k, v in r.items() if k != "hash"}
        assert r["prev_hash"] == prev and keyed_record_hash(chain_key, fields) == r["hash"]
        prev = r["hash"]
    out = home / "export.jsonl"
    result = CliRunner().invoke(audit, ["export", "--label", "safety", "-o", str(out)])
    assert result.exit_code == 0 and "Exported 3 records" in result.output
    assert [json.loads(line)["label"] for line in out.read_text().splitlines()] == ["safety"] * 3
    assert [r["id"] for r in json.loads(run("export", "--json"))] == ids


def test_verify_ok_then_edited(home, ids):
    assert run("verify").startswith("OK: 6 records")
    assert json.loads(run("verify", "--json"))["ok"] is True
    tamper(home, f"UPDATE records SET label = 'answer' WHERE id = '{ids[2]}'")
    out = run("verify", code=1)
    assert out.startswith("Error:") and "edited" in out and ids[2] in out and out.count("\n") == 1
    result = json.loads(run("verify", "--json", code=1))
    assert result["ok"] is False and result["problem"] == "edited" and result["record_id"] == ids[2]


@pytest.mark.parametrize(
    ("sql", "problem", "named"),
    [
        ("DELETE FROM records WHERE id = '{3}'", "deleted", 3),
        ("DELETE FROM records WHERE seq > 4", "truncated", 5),
        (
            "UPDATE records SET seq = -2 WHERE seq = 2; UPDATE records SET seq = 2 WHERE seq = 4; "
            + "UPDATE records SET seq = 4 WHERE seq = -2",
            "reordered",
            3,
        ),
    ],
)
def test_verify_names_the_record(home, ids, sql, problem, named):
    tamper(home, sql.format(*ids))
    out = run("verify", code=1)
    assert problem in out and ids[named] in out


def test_missing_or_foreign_database_is_one_line_error(home, ids):
    out = run("list", "--db", str(home / "elsewhere.db"), code=1)
    assert out.startswith("Error: no audit log at") and out.count("\n") == 1
    junk = home / "junk.db"
    junk.write_bytes(b"this is not sqlite at all" * 100)
    out = run("verify", "--db", str(junk), code=1)
    assert out.startswith("Error:") and "not a database" in out and out.count("\n") == 1
    out = run("list", "--since", "yesterday-ish", code=1)
    assert "ISO 8601" in out and out.count("\n") == 1
    assert run("list", "--db", str(home / "audit.db"), "-n", "1").count("\n") == 2
