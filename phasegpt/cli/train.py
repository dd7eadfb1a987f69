"""CLI commands for the train -> evaluate half of the pipeline: train-head, merge-heads, train-adapter, eval."""

from __future__ import annotations

from pathlib import Path

import click

from phasegpt.cli.options import command_line, load_model, model_options, rank0_reports

DATA_HELP = "Labelled JSONL (prompt, label, optional context/split/source); repeat to combine files."


def _examples(paths: tuple[Path, ...]):
    from phasegpt.train.data import BUNDLED, read_jsonl

    if not paths:
        paths = (BUNDLED,)
        from phasegpt.distributed import world

        if world().rank == 0:
            click.echo(f"no --data given: using the bundled prompts {BUNDLED}", err=True)
    out = []
    for p in paths:
        out += read_jsonl(p)
    return out


@click.command("train-head")
@model_options
@click.option("--data", "-d", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path), help=DATA_HELP)
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False, path_type=Path), help="Head folder to write.")
@click.option("--layers", help="Comma-separated layers to use (default: sweep candidates on dev).")
@click.option("--candidates", help="Comma-separated candidate layers for the sweep (tower with --states cache: more layers "
              "to keep in the state cache, so one cache serves MLP heads and towers alike).")
@click.option("--pooling", type=click.Choice(["last", "mean", "last+mean", "last+mean+attn"]),
              help="Fixed pooling (default: swept). last+mean+attn adds learned attention pools over the prompt's "
              "last positions (needs --states cache; --attn-heads queries per layer, --attn-window positions).")
@click.option("--attn-heads", type=click.IntRange(1, 64), help="last+mean+attn: queries per layer (default 4).")
@click.option("--attn-window", type=click.IntRange(1), help="last+mean+attn: the prompt's last positions attended over (default 128).")
@click.option("--attn-steps", type=click.IntRange(1), help="last+mean+attn: training steps of the queries at most (default 2000).")
@click.option("--kind", default="linear", show_default=True, type=click.Choice(["linear", "mlp", "tower"]),
              help="linear: softmax regression solved with L-BFGS; mlp: one hidden layer of 256; tower: the next "
                   "--depth blocks after --tap run again with LoRA, trained jointly with an MLP.")
@click.option("--seed", default=0, show_default=True,
              help="Initialisation and batch order (mlp: members use consecutive seeds). The dev split and --cap "
              "do not move with it, so heads of different seeds are compared on the same rows.")
@click.option("--batch-size", default=16, show_default=True,
              help="Prompts per forward pass of one CPU stream in feature extraction (similar lengths together).")
@click.option("--cap", type=int, help="At most N training/dev rows per (source, category, label, split), chosen by hash.")
@click.option("--max-tokens", type=int, help="Skip training/dev prompts longer than this many tokens.")
@click.option("--no-cache", is_flag=True, help="Do not read or write the feature cache.")
@click.option("--tap", type=int, help="tower: the tapped block K (default 13, or the sweep's choice).")
@click.option("--depth", type=int, help="tower: blocks re-run after the tap, M (default 4).")
@click.option("--rank", type=int, help="tower: LoRA rank (default 8).")
@click.option("--epochs", type=float, help="tower: passes over the training rows (default 3; early stopping on dev).")
@click.option("--lr", type=float, help="tower: Adam learning rate of the LoRA arrays (default 2e-4).")
@click.option("--warm-share", type=click.FloatRange(0.05, 1.0),
              help="tower: share of the training rows the warm-start MLP is fitted on; fine-tuning steps on the "
              "rest (default 1: all rows for both).")
@click.option("--head-lr", type=float, help="tower: Adam learning rate of the MLP on top (default 3e-4; 0 keeps the warm-start MLP fixed).")
@click.option("--members", type=click.IntRange(1, 32),
              help="mlp: MLPs from consecutive seeds whose logits are averaged (default 5; the head grows with "
              "it: 24 MB on SmolLM2's three layers, about 126 MiB on three of Mistral-7B's, 24 MiB with 1); "
              "tower: the warm-start MLPs averaged the same way before fine-tuning (default 5).")
@click.option("--source-frr-weight", type=float,
              help="Thresholds: macro-F1 given up per unit of any answer source's dev false-refusal rate above 5% "
              "(default 0.05; 0 = only the everyday budget).")
@click.option("--sweep", "sweep_spec", help="tower: trials to sweep first, ';'-separated 'key=value,...' "
              "(e.g. 'tap=9;tap=13;tap=13,depth=2'), each trained for one epoch on 3,000 rows; the best is trained.")
@click.option("--states", default="auto", show_default=True, type=click.Choice(["auto", "cache", "live"]),
              help="tower: cache the tapped states on disk (float16) or compute them live every batch. "
              "linear/mlp: 'cache' pools the features from that per-token cache (shared with towers); "
              "otherwise pooled features are extracted and cached.")
def train_head(model_, adapter, head, dtype, data, out, layers, candidates, pooling, attn_heads, attn_window, attn_steps,
               kind, seed, batch_size, cap,
               max_tokens, no_cache, tap, depth, rank, epochs, lr, head_lr, warm_share, members, source_frr_weight, sweep_spec, states):
    """Train a refusal-reason head for a base model (and adapter) on labelled prompts.

    Rows with "split": "dev" tune layers, temperature and thresholds (a stable 20% of
    the rest when no row has a split); "test" rows are never used. Under mlx.launch
    (linear and mlp heads) every process extracts a share of the features and rank 0
    fits and writes the head.

    \b
    Example:
      phasegpt train-head -d ../shared/data/eval.jsonl -d phasegpt/data/prompts.jsonl -o my-head
      phasegpt train-head -m mlx-community/Mistral-7B-Instruct-v0.3-4bit -d mine.jsonl -o heads/mistral
      mlx.launch --hostfile hosts.json -- phasegpt train-head -d mine.jsonl -o my-head
    """
    from phasegpt.train.data import cap as cap_rows
    from phasegpt.train.fit_head import FitConfig
    from phasegpt.train.train_head import train_head as run

    examples = [e for e in _examples(data) if e.split != "test"]  # never read test rows into training
    if cap:
        examples = cap_rows(examples, cap)  # the rows do not move with --seed
    model = load_model(model_, adapter, None, dtype)
    record = {"data": [str(p) for p in data], "command": command_line()}
    if kind == "tower":
        from phasegpt.train.tower import TowerFit
        from phasegpt.train.train_head import train_tower_head

        given = {k: v for k, v in (("tap", tap), ("depth", depth), ("rank", rank), ("epochs", epochs), ("lr", lr),
                                   ("head_lr", head_lr), ("source_frr_weight", source_frr_weight),
                                   ("members", members), ("warm_share", warm_share)) if v is not None}
        with rank0_reports():
            h = train_tower_head(model, examples, out, fit=TowerFit(**given, seed=seed), sweep=_trials(sweep_spec),
                                 states=states, batch_size=batch_size, training=record, max_tokens=max_tokens,
                                 cache_layers=_ints(candidates) or ())
        m = h.config.metrics
        click.echo(f"wrote {out}: tower from block {h.config.tower['tap']} over {h.config.tower['depth']} blocks, "
                   f"rank {h.config.tower['rank']}, dev macro-F1 {m['dev_macro_f1']:.3f}, accuracy {m['dev_accuracy']:.3f}")
        return
    given = {k: v for k, v in (("source_frr_weight", source_frr_weight), ("mlp_members", members),
                               ("attn_heads", attn_heads), ("attn_window", attn_window), ("attn_steps", attn_steps))
             if v is not None}
    fit = FitConfig(layers=_ints(layers), pooling=pooling, kind=kind, seed=seed, **given)
    with rank0_reports():
        h = run(model, examples, out, candidates=_ints(candidates), fit=fit, batch_size=batch_size,
                use_cache=not no_cache, training=record, max_tokens=max_tokens,
                states="cache" if states == "cache" else "features")
    if h is None:  # another rank than 0 of an mlx.launch job: rank 0 writes the head
        return
    m = h.config.metrics
    click.echo(f"wrote {out}: layers {list(h.config.layers)}, {h.config.pooling}, "
               f"dev macro-F1 {m['dev_macro_f1']:.3f}, accuracy {m['dev_accuracy']:.3f}")


@click.command("merge-heads")
@model_options
@click.argument("heads", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--data", "-d", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help=DATA_HELP + " Its dev rows calibrate the merged head.")
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False, path_type=Path), help="Head folder to write.")
@click.option("--max-tokens", type=int, help="Skip dev prompts longer than this many tokens (as the heads were fitted).")
@click.option("--batch-size", default=16, show_default=True, help="Prompts per forward pass for dev states not cached yet.")
@click.option("--members", type=click.IntRange(1, 32),
              help="mlp: keep the first N MLPs of each kind (last+mean; with the pools) of every fit, so the merged "
              "head costs less per verdict (default: all); their OOD statistic is estimated again on the train rows.")
def merge_heads(model_, adapter, head, dtype, heads, data, out, max_tokens, batch_size, members):
    """Merge heads fitted apart (other seeds, other data) into one head that averages them.

    The heads must read the same features: same base model, layers, pooling and kind (linear or
    mlp). Each keeps its own attention queries; the merged head's temperature, OOD percentile and
    thresholds are fitted on the dev rows of --data.

    \b
    Example:
      phasegpt merge-heads heads/seed0 heads/seed100 -d ../shared/data/eval.jsonl \\
          -d phasegpt/data/prompts.jsonl --max-tokens 1024 --members 2 -o heads/merged
    """
    from phasegpt.head import Head
    from phasegpt.train.merge import merge_heads as run

    if head is not None:
        raise click.UsageError("merge-heads reads the heads it is given as arguments; drop --head")
    if len(heads) < 2:
        raise click.UsageError("name at least two head folders to merge")
    loaded = [Head.load(h) for h in heads]
    examples = [e for e in _examples(data) if e.split != "test"]  # never read test rows
    model = load_model(model_, adapter, None, dtype)
    record = {"data": [str(p) for p in data], "heads": [str(h) for h in heads], "command": command_line()}
    try:
        h = run(model, loaded, examples, out, max_tokens=max_tokens, batch_size=batch_size, training=record,
                members=members)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    m = h.config.metrics
    click.echo(f"wrote {out}: {h.config.fits} fits, layers {list(h.config.layers)}, {h.config.pooling}, "
               f"dev macro-F1 {m['dev_macro_f1']:.3f}, accuracy {m['dev_accuracy']:.3f}")


TRIAL_KEYS = {"tap": int, "depth": int, "rank": int, "scale": float, "keys": lambda v: tuple(v.split("+"))}


def _trials(spec: str | None) -> list[dict]:
    """``'tap=9;tap=13,depth=2'`` -> ``[{"tap": 9}, {"tap": 13, "depth": 2}]`` (keys joined with '+')."""
    trials = []
    for part in filter(None, (p.strip() for p in (spec or "").split(";"))):
        trial = {}
        for item in part.split(","):
            key, _, value = item.partition("=")
            if key.strip() not in TRIAL_KEYS or not value.strip():
                raise click.BadParameter(f"{item!r} in --sweep: write key=value with key one of {', '.join(TRIAL_KEYS)}")
            try:
                trial[key.strip()] = TRIAL_KEYS[key.strip()](value.strip())
            except ValueError:
                raise click.BadParameter(f"{item!r} in --sweep: {value!r} is not a valid {key.strip()}") from None
        trials.append(trial)
    return trials


def _ints(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of layer numbers") from None


@click.command("train-adapter")
@model_options
@click.option("--data", "-d", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path), help=DATA_HELP)
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False, path_type=Path), help="Adapter folder to write.")
@click.option("--style", default="tag", show_default=True, type=click.Choice(["tag", "text"]),
              help="Refusals as <PASS:TYPE> tags or short typed sentences.")
@click.option("--iters", default=600, show_default=True)
@click.option("--rank", default=16, show_default=True)
@click.option("--num-layers", default=-1, show_default=True, help="Layers to adapt, from the top (-1 = all).")
@click.option("--batch-size", default=4, show_default=True)
@click.option("--learning-rate", default=1e-5, show_default=True)
@click.option("--seed", default=0, show_default=True)
def train_adapter(model_, adapter, head, dtype, data, out, style, iters, rank, num_layers, batch_size,
                  learning_rate, seed):
    """Train a PhaseGPT-style typed-refusal LoRA adapter with mlx-lm's tuner.

    The loss is on the response tokens only. Answer rows without a "response" get the
    base model's own greedy answer.

    \b
    Example:
      phasegpt train-adapter -d phasegpt/data/prompts.jsonl -o adapters/my-lora --iters 200
    """
    from phasegpt.train.adapter import AdapterConfig, make_chat_examples
    from phasegpt.train.adapter import train_adapter as run
    from phasegpt.train.data import split

    if adapter is not None:
        raise click.UsageError("train-adapter trains a new adapter on the base model; drop --adapter")
    from phasegpt.train.train_head import fitting

    examples = [e for e in _examples(data) if e.split != "test"]
    model = load_model(model_, None, None, dtype)
    examples, too_long = fitting(model, examples)
    if too_long:
        click.echo(f"skipped {len(too_long)} examples longer than the model's context", err=True)
    train, dev = split(examples)  # the same dev rows whatever --seed

    def records(xs):
        return [{"prompt": e.prompt, "label": e.label, "context": e.context, **e.extra} for e in xs]

    tok, net = model.tokenizer, model.loaded.model
    cfg = AdapterConfig(rank=rank, num_layers=num_layers, iters=iters, batch_size=batch_size,
                        learning_rate=learning_rate, seed=seed)
    path = run(net, tok, make_chat_examples(records(train), tok, style=style, model=net, progress=True),
               make_chat_examples(records(dev), tok, style=style, model=net, progress=True), out, config=cfg,
               base_model=model.name, base_fingerprint=model.loaded.fingerprint)
    click.echo(f"wrote {path}")


@click.command("eval")
@model_options
@click.option("--data", "-d", required=True, multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help=DATA_HELP)
@click.option("--split", "split_", default="test", show_default=True, help="Which split to score ('all' for every row).")
@click.option("--out", "-o", type=click.Path(file_okay=False, path_type=Path), help="Write metrics.json, report.md and figures here.")
@click.option("--batch-size", default=16, show_default=True)
@click.option("--title", default="phasegpt evaluation", show_default=True)
@click.option("--no-cache", is_flag=True, help="Do not read or write the feature cache.")
def eval_(model_, adapter, head, dtype, data, split_, out, batch_size, title, no_cache):
    """Score a head on labelled data: accuracy, macro-F1, per-class and per-source tables, calibration.

    Features go through the same batched prefill as `classify` and the feature cache, so
    evaluating again (another head on the same base) is fast. Under mlx.launch every process
    scores a share of the rows (by tokens) and rank 0 reports the metrics over all of them.

    \b
    Example:
      phasegpt eval -d ../shared/data/eval.jsonl --split test -o reports/smollm2
      mlx.launch -n 2 -- phasegpt eval -d ../shared/data/eval.jsonl --split test
    """

    from phasegpt.evaluate import evaluate, format_summary, write_report
    from phasegpt.train.data import read_jsonl

    rows = []
    for p in data:
        rows += [e for e in read_jsonl(p, skip_other=False) if split_ == "all" or e.split == split_]
    if not rows:
        raise click.ClickException(f"no rows with split {split_!r} in {', '.join(map(str, data))}")
    from phasegpt.distributed import world
    from phasegpt.train.features import predict
    from phasegpt.train.train_head import fitting

    model = load_model(model_, adapter, head, dtype)
    rows, too_long = fitting(model, rows)
    if too_long and world().rank == 0:
        click.echo(f"skipped {len(too_long)} rows longer than the model's context: "
                   + ", ".join(str(e.extra.get("id", e.prompt[:30])) for e in too_long), err=True)
    if model.head is None:
        raise click.ClickException("eval needs a head: pass --head (or an --adapter folder holding head.json)")
    with rank0_reports():
        probs, predictions, ood = predict(model, rows, batch_size=batch_size, use_cache=not no_cache)
    if world().rank != 0:  # under mlx.launch: every rank has every prediction; rank 0 reports
        return
    result = evaluate([e.label for e in rows], probs, predictions=predictions,
                      sources=[e.source or "unknown" for e in rows],
                      source_labels=[e.extra.get("source_label", e.label) for e in rows], ood=ood)
    result["n_too_long"] = len(too_long)
    result["too_long_ids"] = [str(e.extra.get("id", "")) for e in too_long]
    click.echo(format_summary(result))
    if out is not None:
        paths = write_report(result, out, title=title, command=command_line())
        click.echo("wrote " + ", ".join(str(p) for p in paths.values()), err=True)

