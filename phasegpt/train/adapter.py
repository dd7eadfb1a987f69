"""Train a PhaseGPT-style typed-refusal LoRA adapter with mlx-lm's own tuner.

The fine-tuned model answers normally or emits a typed tag (``<PASS:POLICY>`` for
safety, ``<PASS:UNKNOWABLE>`` for epistemic, ``<PASS:CONTEXT>`` for missing context).
Nothing here re-implements LoRA: ``linear_to_lora_layers`` makes the layers,
``ChatDataset`` tokenizes with the chat template and computes the prompt offset that
masks the loss, ``trainer.train`` runs the loop. The result is a folder in exactly
``mlx_lm.lora``'s format (``adapter_config.json`` + ``adapters.safetensors``), so
``mlx_lm.load(model, adapter_path=folder)`` reads it. The training examples come from
``phasegpt.train.examples`` (re-exported here).

Typical use::

    model, tokenizer = mlx_lm.load("mistralai/Mistral-7B-Instruct-v0.3")
    train = make_chat_examples(train_records, tokenizer)
    valid = make_chat_examples(valid_records, tokenizer)
    train_adapter(model, tokenizer, train, valid, "adapters/typed", config=AdapterConfig())
"""

from __future__ import annotations

import contextlib
import io
import secrets
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import click
import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten
from mlx_lm.tuner.callbacks import TrainingCallback
from mlx_lm.tuner.lora import LoRALinear
from mlx_lm.tuner.trainer import TrainingArgs, train
from mlx_lm.tuner.utils import linear_to_lora_layers
from mlx_lm.utils import save_config

from phasegpt.tower import ATTENTION_KEYS, MLP_KEYS, projection_shapes
from phasegpt.train.examples import REFUSAL_TAGS, REFUSAL_TEXTS, STYLES, make_chat_examples, tokenized_dataset

# Re-exported so `from phasegpt.train.adapter import make_chat_examples` (cli_train) keeps working.
__all__ = ["ATTENTION_KEYS", "MLP_KEYS", "REFUSAL_TAGS", "REFUSAL_TEXTS", "STYLES", "AdapterConfig",
           "adapter_size_bytes", "make_chat_examples", "response_loss", "train_adapter"]



@dataclass(frozen=True)
class AdapterConfig:
    """How to train the adapter. The defaults are the Mistral-7B recipe.

    On Mistral-7B (32 layers, hidden 4096, 8 KV heads of 128) the defaults put rank-16
    LoRA on q/k/v/o of all 32 layers: 13,631,488 parameters, 54.5 MB in float32 (the
    dtype mlx-lm trains and saves LoRA weights in), 27.3 MB in float16. Adding the three
    MLP projections at rank 16 would make it 168 MB; attention-only is enough to learn
    a handful of tags. ``adapter_size_bytes`` recomputes this for any config.

    Attributes:
        rank: LoRA rank ``r``.
        scale: mlx-lm multiplies the LoRA output by ``scale`` directly (it is *not*
            ``alpha / rank`` as in PEFT; PEFT's alpha=32 at r=16 is scale 2.0).
            20.0 is mlx-lm's default and goes with its small learning rate.
        dropout: dropout on the LoRA input; a little regularisation for a data set
            of a few thousand short examples.
        num_layers: how many blocks, counted from the last, get LoRA; -1 = all.
        keys: projections inside each block to adapt (mlx-lm module paths);
            None = every linear layer of the block, as mlx-lm does.
        iters: optimizer steps.
        batch_size: examples per step.
        learning_rate: Adam learning rate.
        max_seq_length: longer examples are truncated by mlx-lm's batcher.
        seed: seeds LoRA initialisation (MLX) and batch order (NumPy).
        mask_prompt: loss on the assistant's tokens only, not on the prompt's.
        steps_per_report: steps between training-loss reports.
        steps_per_eval: steps between validation-loss reports (also at the first and last).
        val_batches: validation batches per report; -1 = the whole validation set.
        grad_checkpoint: recompute activations in the backward pass to save memory.
    """

    rank: int = 16
    scale: float = 20.0
    dropout: float = 0.05
    num_layers: int = -1
    keys: tuple[str, ...] | None = ATTENTION_KEYS
    iters: int = 600
    batch_size: int = 4
    learning_rate: float = 1e-5
    max_seq_length: int = 2048
    seed: int = 0
    mask_prompt: bool = True
    steps_per_report: int = 10
    steps_per_eval: int = 100
    val_batches: int = 25
    grad_checkpoint: bool = False

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"rank must be at least 1, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.num_layers == 0 or self.num_layers < -1:
            raise ValueError(f"num_layers must be -1 (all) or positive, got {self.num_layers}")
        for name in ("iters", "batch_size", "max_seq_length", "steps_per_report", "steps_per_eval"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.keys is not None:
            object.__setattr__(self, "keys", tuple(self.keys))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AdapterConfig:
        """Build from a dict, ignoring keys that are not fields."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def lora_parameters(self) -> dict[str, Any]:
        """The ``lora_parameters`` dict that mlx-lm's ``linear_to_lora_layers`` takes."""
        params: dict[str, Any] = {"rank": self.rank, "scale": self.scale, "dropout": self.dropout}
        if self.keys is not None:
            params["keys"] = list(self.keys)
        return params


def adapter_size_bytes(
    model_config: Mapping[str, Any], cfg: AdapterConfig, *, dtype_bytes: int = 4
) -> int:
    """Bytes of LoRA weights ``cfg`` puts on a model, from its config alone (no weights).

    Each adapted linear layer ``in -> out`` holds ``lora_a`` (in x r) and ``lora_b``
    (r x out): ``rank * (in + out)`` numbers. Safetensors adds a small JSON header.

    Args:
        model_config: the model's ``config.json`` as a dict (llama/mistral-style).
        cfg: the adapter configuration.
        dtype_bytes: bytes per number; 4 for float32, which mlx-lm saves.

    Returns:
        The size of the adapter's tensors in bytes.

    Raises:
        ValueError: the config lacks a size, a key is not a known projection, or
            ``num_layers`` exceeds the model's layers.
    """
    shapes = projection_shapes(model_config)
    keys = shapes.keys() if cfg.keys is None else cfg.keys
    unknown = sorted(set(keys) - set(shapes))
    if unknown:
        raise ValueError(f"unknown projection keys {unknown}; known: {sorted(shapes)}")
    total_layers = int(model_config["num_hidden_layers"])
    if cfg.num_layers > total_layers:
        raise ValueError(f"num_layers={cfg.num_layers} but the model has {total_layers} layers")
    layers = total_layers if cfg.num_layers == -1 else cfg.num_layers
    per_layer = sum(cfg.rank * (shapes[k][0] + shapes[k][1]) for k in keys)
    return layers * per_layer * dtype_bytes


def response_loss(model: nn.Module, batch: mx.array, lengths: mx.array) -> tuple[mx.array, mx.array]:
    """Mean cross-entropy over each row's targets from its offset to its last real token.

    mlx-lm's trainer batch format: ``batch`` (B, T) right-padded token ids, ``lengths``
    (B, 2) of (prompt offset, length). Same as mlx-lm 0.32's ``default_loss`` except the
    mask ends at the last real token: ``default_loss`` (``steps <= length``) also scores
    one padding target per row, which for a short typed tag is a tenth of the signal.

    Returns:
        (mean loss, number of scored tokens), as the trainer expects.
    """
    inputs, targets = batch[:, :-1], batch[:, 1:]
    logits = model(inputs)
    steps = mx.arange(1, targets.shape[1] + 1)  # steps[t]: position of targets[t] in the row
    mask = mx.logical_and(steps >= lengths[:, 0:1], steps < lengths[:, 1:])
    ntoks = mask.sum()
    ce = (nn.losses.cross_entropy(logits, targets) * mask).astype(mx.float32).sum() / ntoks
    return ce, ntoks


class _Progress(TrainingCallback):
    """Records every loss report; prints each as one line to stderr when ``echo``."""

    def __init__(self, iters: int, echo: bool, extra: TrainingCallback | None) -> None:
        self.iters, self.echo, self.extra = iters, echo, extra
        self.train_losses: list[list[float]] = []
        self.val_losses: list[list[float]] = []

    def on_train_loss_report(self, info: dict) -> None:
        self.train_losses.append([info["iteration"], info["train_loss"]])
        if self.echo:
            click.echo(
                f"iter {info['iteration']}/{self.iters}  train loss {info['train_loss']:.3f}  "
                f"{info['tokens_per_second']:.0f} tok/s",
                err=True,
            )
        if self.extra is not None:
            self.extra.on_train_loss_report(info)

    def on_val_loss_report(self, info: dict) -> None:
        self.val_losses.append([info["iteration"], info["val_loss"]])
        if self.echo:
            click.echo(f"iter {info['iteration']}/{self.iters}  val loss {info['val_loss']:.3f}", err=True)
        if self.extra is not None:
            self.extra.on_val_loss_report(info)


def _check_model(model: nn.Module, cfg: AdapterConfig) -> None:
    if any(isinstance(m, LoRALinear) for _, m in model.named_modules()):
        raise ValueError("the model already carries a LoRA adapter; load the base model without one")
    layers = getattr(model, "layers", None)
    if not layers:
        raise ValueError("the model has no .layers; only mlx-lm transformer models can be adapted")
    if cfg.num_layers > len(layers):
        raise ValueError(f"num_layers={cfg.num_layers} but the model has {len(layers)} layers")
    if cfg.keys is not None:
        # linear_to_lora_layers silently skips keys it does not find: catch typos here.
        present = {name for name, _ in layers[-1].named_modules()}
        missing = sorted(set(cfg.keys) - present)
        if missing:
            raise ValueError(f"projection keys {missing} are not in the model's blocks")


def _model_identity(model: nn.Module, base_model: str, fingerprint: str) -> dict[str, Any]:
    args = getattr(model, "args", None)
    keys = ("model_type", "hidden_size", "num_hidden_layers", "vocab_size")
    shape = {k: getattr(args, k) for k in keys if hasattr(args, k)}
    # `phasegpt.load` refuses the adapter on any base whose fingerprint differs from this one
    return {"name": base_model, **({"fingerprint": fingerprint} if fingerprint else {}), **shape}


def train_adapter(
    model: nn.Module,
    tokenizer: Any,
    train_examples: Sequence[Mapping[str, Any]],
    valid_examples: Sequence[Mapping[str, Any]],
    out_dir: str | Path,
    *,
    config: AdapterConfig,
    progress: bool = True,
    base_model: str = "",
    base_fingerprint: str = "",
    overwrite: bool = False,
    callback: TrainingCallback | None = None,
) -> Path:
    """Train a LoRA adapter on chat examples and save it in mlx-lm's adapter format.

    The model is changed in place: it is frozen and keeps the trained LoRA layers, in
    eval mode, so it can be used (or evaluated) right away. The folder is written to a
    temporary sibling and renamed into place at the end, so an interrupted run never
    leaves a half-written adapter.

    Args:
        model: an mlx-lm model (float or quantized: QLoRA) without an adapter.
        tokenizer: its mlx-lm ``TokenizerWrapper``, with a chat template.
        train_examples: ``{"messages": [...]}`` dicts, e.g. from ``make_chat_examples``.
        valid_examples: the same for validation; may be empty.
        out_dir: the adapter folder to create.
        config: hyperparameters.
        progress: print loss reports to stderr (mlx-lm's own terminal UI is silenced
            so stdout stays clean for ``--json`` output).
        base_model: name or path of the base model, recorded in the config as ``model``.
        base_fingerprint: the base model's fingerprint (``LoadedModel.fingerprint``), recorded
            so that ``phasegpt.load`` refuses the adapter on another base; without it the
            adapter loads anywhere its shapes fit, with a warning.
        overwrite: replace an existing ``out_dir`` (only once training succeeded).
        callback: an extra mlx-lm ``TrainingCallback`` (e.g. for experiment tracking).

    Returns:
        ``out_dir`` as a Path.

    Raises:
        FileExistsError: ``out_dir`` exists and ``overwrite`` is False.
        ValueError: bad config for this model, too few examples, or malformed examples.
    """
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; choose another folder or pass overwrite=True")
    if len(train_examples) < config.batch_size:
        raise ValueError(f"{len(train_examples)} training examples is fewer than batch_size={config.batch_size}")
    if 0 < len(valid_examples) < config.batch_size:
        raise ValueError(
            f"{len(valid_examples)} validation examples is fewer than batch_size={config.batch_size}; "
            "give more or none"
        )
    _check_model(model, config)
    opts = {"mask_prompt": config.mask_prompt, "max_seq_length": config.max_seq_length}
    train_set = tokenized_dataset(train_examples, tokenizer, **opts, name="training")
    valid_set = tokenized_dataset(valid_examples, tokenizer, **opts, name="validation") if valid_examples else None

    mx.random.seed(config.seed)  # LoRA's lora_a initialisation
    np.random.seed(config.seed)  # mlx-lm's batch order
    model.freeze()
    linear_to_lora_layers(model, config.num_layers, config.lora_parameters())

    out.parent.mkdir(parents=True, exist_ok=True)
    # a plain mkdir (not mkdtemp, which is owner-only): the folder gets the umask's permissions
    tmp = out.parent / f".{out.name}.{secrets.token_hex(6)}.tmp"
    tmp.mkdir()
    try:
        report = _Progress(config.iters, progress, callback)
        args = TrainingArgs(
            batch_size=config.batch_size,
            iters=config.iters,
            val_batches=config.val_batches,
            steps_per_report=config.steps_per_report,
            steps_per_eval=config.steps_per_eval,
            steps_per_save=config.iters + 1,  # no intermediate checkpoints in the folder
            max_seq_length=config.max_seq_length,
            adapter_file=str(tmp / "adapters.safetensors"),
            grad_checkpoint=config.grad_checkpoint,
        )
        optimizer = optim.Adam(learning_rate=config.learning_rate)
        with contextlib.redirect_stdout(io.StringIO()):
            train(model, optimizer, train_set, valid_set, args=args, loss=response_loss, training_callback=report)
        model.eval()  # mlx-lm's trainer leaves dropout on
        n_params = sum(v.size for _, v in tree_flatten(model.trainable_parameters()))
        save_config(_adapter_config(config, model, base_model, base_fingerprint, report, n_params),
                    tmp / "adapter_config.json")
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _adapter_config(
    cfg: AdapterConfig, model: nn.Module, base_model: str, fingerprint: str, report: _Progress, n_params: int
) -> dict[str, Any]:
    """mlx_lm.lora's adapter_config.json fields, plus phasegpt's record of the run."""
    return {
        "fine_tune_type": "lora",
        "model": base_model,
        "num_layers": cfg.num_layers,
        "lora_parameters": cfg.lora_parameters(),
        "optimizer": "adam",
        "batch_size": cfg.batch_size,
        "iters": cfg.iters,
        "learning_rate": cfg.learning_rate,
        "max_seq_length": cfg.max_seq_length,
        "mask_prompt": cfg.mask_prompt,
        "seed": cfg.seed,
        "steps_per_report": cfg.steps_per_report,
        "steps_per_eval": cfg.steps_per_eval,
        "val_batches": cfg.val_batches,
        "grad_checkpoint": cfg.grad_checkpoint,
        "phasegpt": {
            "adapter_config": {**asdict(cfg), "keys": None if cfg.keys is None else list(cfg.keys)},
            "base_model": _model_identity(model, base_model, fingerprint),
            "trainable_parameters": n_params,
            "refusal_tags": dict(REFUSAL_TAGS),
            "train_losses": report.train_losses,
            "val_losses": report.val_losses,
        },
    }


def _replace_dir(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst``; an existing ``dst`` is removed only after the move."""
    if not dst.exists():
        src.rename(dst)
        return
    old = dst.with_name(f".{dst.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    dst.rename(old)
    src.rename(dst)
    shutil.rmtree(old, ignore_errors=True)
