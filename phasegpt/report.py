"""Write what ``phasegpt.evaluate.evaluate`` computed: a terminal summary, a Markdown report, two figures.

``write_report`` puts ``metrics.json``, ``report.md``, ``confusion.png`` and
``reliability.png`` in one folder, each written atomically; the figures need matplotlib
and are skipped with a warning without it. Nothing here computes a metric: every
number comes from the result dict that ``evaluate`` returned.
"""

from __future__ import annotations

import json
import os
import secrets
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from phasegpt.verdict import LABELS


def format_summary(result: dict[str, Any]) -> str:
    """A few lines for a terminal: headline metrics, per-class recall, per-source accuracy."""
    lines = [
        f"n={result['n']} (excluded {result['n_excluded']})  accuracy {_fmt(result['accuracy'])}  "
        f"macro-F1 {_fmt(result['macro_f1'])}  ECE {_fmt(result['ece'])}",
        f"safety recall {_fmt(result['safety_recall'])}  false refusals {_fmt(result['false_refusal_rate'])}  "
        f"xstest safe flagged safety {_fmt(result['xstest_safe_flagged_safety'])}",
        f"false refusals on everyday requests (arena_hard + ifeval) {_fmt(result.get('false_refusal_everyday'))}  "
        f"worst answer source {_worst(result.get('false_refusal_worst_source'))}"
        + (f"  outside the training data (ood > 1) {_fmt(result['ood_share'])}" if result.get("ood_share") is not None else ""),
        "recall: " + "  ".join(f"{k} {_fmt(v['recall'])}" for k, v in result["per_class"].items()),
    ]
    for name, s in result.get("per_source", {}).items():
        lines.append(
            f"  {name}: n={s['n']}  accuracy {_fmt(s.get('accuracy'))}  macro-F1 {_fmt(s.get('macro_f1'))}  "
            f"false refusals {_fmt(s.get('false_refusal_rate'))}"
            + (f"  ood>1 {_fmt(s['ood_share'])}" if s.get("ood_share") is not None else "")
        )
    return "\n".join(lines)


def _worst(w: dict[str, Any] | None) -> str:
    return "-" if w is None else f"{w['source']} {_fmt(w['rate'])}"


def write_report(result: dict[str, Any], out_dir: Path, *, title: str, command: str | None = None) -> dict[str, Path]:
    """Write ``metrics.json``, ``report.md``, ``confusion.png`` and ``reliability.png``.

    Every file is written to a temporary name in ``out_dir`` and renamed, so a reader
    never sees half a report. Figures need matplotlib (``pip install 'phasegpt[eval]'``);
    without it they are skipped with a warning and the rest is still written.

    Args:
        result: what ``evaluate`` returned.
        out_dir: folder to write into (created if missing).
        title: heading of the report.
        command: the command line that produced the predictions, recorded for re-runs.

    Returns:
        The paths written, keyed ``metrics``, ``report`` and, with matplotlib,
        ``confusion`` and ``reliability``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = _write_figures(result, out_dir)
    meta = {"title": title, "command": command, **result}
    paths = {
        "metrics": _atomic_write(out_dir / "metrics.json", (json.dumps(meta, indent=2) + "\n").encode()),
        "report": _atomic_write(out_dir / "report.md", _markdown(result, title, command, figures).encode()),
    }
    paths.update(figures)
    return paths


def _atomic_write(path: Path, data: bytes | None = None, *, figure: Any = None) -> Path:
    """Write bytes (or a matplotlib figure as PNG) to a temp file beside ``path``, then rename.

    The temp file is created with mode 0666 so the kernel applies the umask: a report is for
    sharing (mkstemp would make it 0600), and no process-wide umask is touched.
    """
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            if figure is not None:
                figure.savefig(f, format="png", dpi=120, bbox_inches="tight")
            else:
                f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _fmt(x: Any) -> str:
    return "—" if x is None else f"{x:.3f}" if isinstance(x, float) else str(x)


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(_fmt(v)) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _markdown(result: dict[str, Any], title: str, command: str | None, figures: dict[str, Path]) -> str:
    r = result
    parts = [f"# {title}", ""]
    parts += ["Produced by:", "", "```sh", command, "```"] if command else ["Command not recorded."]
    parts += ["", "## Headline", "", _table(["metric", "value"], [
        ["items scored", r["n"]],
        ["items excluded (label not in LABELS)", r["n_excluded"]],
        ["accuracy", r["accuracy"]],
        [f"macro-F1 ({', '.join(r['macro_f1_labels'])})", r["macro_f1"]],
        ["safety recall", r["safety_recall"]],
        ["false-refusal rate (answer items given a refusal label)", r["false_refusal_rate"]],
        ["false-refusal rate on everyday requests (arena_hard + ifeval)", r.get("false_refusal_everyday")],
        ["highest false-refusal rate of one answer source", _worst(r.get("false_refusal_worst_source"))],
        *([["share outside the training data (ood > 1)", r["ood_share"]]] if r.get("ood_share") is not None else []),
        [f"expected calibration error ({r['calibration']['n_bins']} bins)", r["ece"]],
        ["XSTest safe prompts predicted safety", r["xstest_safe_flagged_safety"]],
    ])]
    parts += ["", "## Per class", "", _table(
        ["label", "precision", "recall", "F1", "support", "predicted"],
        [[k, v["precision"], v["recall"], v["f1"], v["support"], v["predicted"]] for k, v in r["per_class"].items()],
    )]
    cm = r["confusion"]
    parts += ["", "## Confusion matrix", "", "Rows are true labels, columns predicted labels.", "",
              _table(["true \\ predicted", *cm["labels"]], [[t, *row] for t, row in zip(cm["labels"], cm["matrix"])])]
    if "confusion" in figures:
        parts += ["", "![confusion matrix](confusion.png)"]
    if r["per_source"]:
        with_ood = r.get("ood_share") is not None
        rows = [[name, s["n"], s.get("accuracy"), s.get("macro_f1"),
                 *[s["recall"][k] if "recall" in s else None for k in LABELS], s.get("false_refusal_rate"),
                 *([s.get("ood_share")] if with_ood else [])]
                for name, s in r["per_source"].items()]
        parts += ["", "## Per source", "", "Macro-F1 here averages the labels present in each source.", "",
                  _table(["source", "n", "accuracy", "macro-F1", *[f"recall {k}" for k in LABELS], "false refusals",
                          *(["ood > 1"] if with_ood else [])], rows)]
    if any(pt["safety_recall"] is not None for pt in r.get("safety_operating_points", [])):  # needs safety items
        parts += ["", "## Safety operating points", "",
                  "If `safety` were predicted whenever p(safety) reaches the threshold (one versus rest): "
                  "the recall on safety items against the share of safe prompts it would flag.", "",
                  _table(["p(safety) ≥", "safety recall", "XSTest safe prompts flagged", "answer items flagged"],
                         [[pt["threshold"], pt["safety_recall"], pt["xstest_safe_flagged"], pt["answer_flagged"]]
                          for pt in r["safety_operating_points"]])]
    cal = r["calibration"]
    parts += ["", "## Calibration", "",
              f"Expected calibration error {_fmt(cal['ece'])} over {cal['n_bins']} equal-width bins of the "
              "highest probability (non-empty bins shown).", "",
              _table(["bin", "count", "mean confidence", "accuracy", "gap"],
                     [[f"({b['lower']:.3f}, {b['upper']:.3f}]", b["count"], b["confidence"], b["accuracy"],
                       abs(b["accuracy"] - b["confidence"])] for b in cal["bins"] if b["count"]])]
    if "reliability" in figures:
        parts += ["", "![reliability diagram](reliability.png)"]
    if r["excluded_predictions"]:
        parts += ["", "## Excluded items", "", "How items outside the four labels were predicted.", "",
                  _table(["source label", "n", *LABELS],
                         [[key, sum(h.values()), *h.values()] for key, h in r["excluded_predictions"].items()])]
    return "\n".join(parts) + "\n"


def _write_figures(result: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    try:
        # The object-oriented API with an explicit Agg canvas leaves pyplot's global backend alone.
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        warnings.warn("matplotlib is missing, so confusion.png and reliability.png were skipped: "
                      "pip install 'phasegpt[eval]'", stacklevel=3)
        return {}

    def save(fig: Figure, name: str) -> Path:
        FigureCanvasAgg(fig)
        return _atomic_write(out_dir / name, figure=fig)

    return {"confusion": save(_confusion_figure(Figure, result), "confusion.png"),
            "reliability": save(_reliability_figure(Figure, result), "reliability.png")}


def _confusion_figure(Figure: type, result: dict[str, Any]):
    cm = np.array(result["confusion"]["matrix"], dtype=float)
    names = result["confusion"]["labels"]
    # Colour by share of each true class so small classes are as readable as large ones.
    share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig = Figure(figsize=(6, 5))
    ax = fig.add_subplot()
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{int(cm[i, j])}\n{share[i, j]:.0%}", ha="center", va="center",
                    color="white" if share[i, j] > 0.5 else "black", fontsize=9)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"Confusion (n={result['n']}, accuracy {result['accuracy']:.3f})")
    fig.colorbar(im, ax=ax, label="share of true class")
    return fig


def _reliability_figure(Figure: type, result: dict[str, Any]):
    cal = result["calibration"]
    bins = [b for b in cal["bins"] if b["count"]]
    width = 1.0 / cal["n_bins"]
    centers = [(b["lower"] + b["upper"]) / 2 for b in bins]
    fig = Figure(figsize=(6, 6))
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    acc = np.array([b["accuracy"] for b in bins])
    conf = np.array([b["confidence"] for b in bins])
    top.bar(centers, acc, width=width * 0.9, color="tab:blue", label="accuracy")
    # The gap between a bin's accuracy and its mean confidence is what ECE averages.
    top.bar(centers, np.abs(acc - conf), bottom=np.minimum(acc, conf), width=width * 0.9, color="tab:red",
            alpha=0.35, hatch="//", edgecolor="tab:red", label="gap to mean confidence")
    top.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.set_title(f"Reliability (ECE {cal['ece']:.3f}, {cal['n_bins']} bins)")
    top.legend(loc="upper left", fontsize=8)
    bottom.bar(centers, [b["count"] for b in bins], width=width * 0.9, color="grey")
    for x, b in zip(centers, bins):
        bottom.annotate(str(b["count"]), (x, b["count"]), ha="center", va="bottom", fontsize=7)
    bottom.set_ylim(0, max([b["count"] for b in bins], default=1) * 1.3)
    bottom.set_xlim(0, 1)
    bottom.set_xlabel("highest probability")
    bottom.set_ylabel("items")
    return fig
