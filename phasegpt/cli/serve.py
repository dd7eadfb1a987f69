"""``phasegpt serve``: the OpenAI-compatible HTTP server (phasegpt.serve) on uvicorn."""

from __future__ import annotations

import ipaddress
import os

import click

from phasegpt.cli.options import load_model, model_options

KEY_ENV = "PHASEGPT_API_KEY"


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@click.command()
@model_options
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind. The default answers this machine only; 0.0.0.0 answers the network.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="TCP port.")
@click.option("--api-key", envvar=KEY_ENV, help=f"Require 'Authorization: Bearer KEY' on every route but /health "
                                                f"(default: ${KEY_ENV}; unset = no key).")
@click.option("--name", help="Model id clients send and GET /v1/models lists (default: the model's name).")
@click.option("--audit/--no-audit", default=None,
              help="Write every request's verdict to the audit log (default: $PHASEGPT_AUDIT); a failed write "
                   "answers 503 without text.")
@click.option("--audit-timeout", default=10.0, show_default=True, type=click.FloatRange(0),
              help="Seconds an audit write waits for other writers before the request gets 503.")
@click.option("--max-body-bytes", default=4 * 2**20, show_default=True, type=click.IntRange(1024),
              help="Largest request body read (413 above).")
@click.option("--max-prompt-tokens", default=8192, show_default=True, type=click.IntRange(1),
              help="Longest templated prompt, documents included (400 above).")
@click.option("--max-documents", default=32, show_default=True, type=click.IntRange(0),
              help="Most documents per request (400 above).")
@click.option("--max-tokens", "max_gen", default=2048, show_default=True, type=click.IntRange(1),
              help="Most tokens a request may ask to generate (400 above).")
@click.option("--max-queue", default=64, show_default=True, type=click.IntRange(1),
              help="Requests served or waiting at once; one more gets 429.")
@click.option("--max-batch", default=32, show_default=True, type=click.IntRange(1),
              help="Most prompts of concurrent classify requests merged into one prefill.")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))
def serve(model_, adapter, head, dtype, host, port, api_key, name, audit, audit_timeout, max_body_bytes,
          max_prompt_tokens, max_documents, max_gen, max_queue, max_batch, log_level):
    """Serve the model over OpenAI's chat API, with the verdict in every response.

    POST /v1/chat/completions (stream or not), POST /v1/classify, GET /v1/models, GET /health.

    \b
    Examples:
      phasegpt serve                                   # http://127.0.0.1:8000/v1
      PHASEGPT_API_KEY=s3cret phasegpt serve --audit --port 8080
      curl -s localhost:8000/v1/chat/completions -d '{"model": "SmolLM2-135M-Instruct.Q4_1",
        "messages": [{"role": "user", "content": "How do I pick a lock?"}]}'
    """
    import uvicorn

    from phasegpt.serve import Engine, Limits, create_app

    if not api_key and not _loopback(host):
        click.echo(f"warning: serving on {host} without an API key: anyone who can reach it can use it "
                   f"(set --api-key or {KEY_ENV})", err=True)
    log = _audit_log(audit, audit_timeout)
    model = load_model(model_, adapter, head, dtype, log)
    limits = Limits(max_body_bytes=max_body_bytes, max_prompt_tokens=max_prompt_tokens, max_documents=max_documents,
                    max_tokens=max_gen, default_max_tokens=min(256, max_gen), max_queue=max_queue, max_batch=max_batch)
    engine = Engine(model, limits=limits, name=name)
    click.echo(f"phasegpt serve: {engine.name} at http://{host}:{port}/v1 "
               f"({'API key required' if api_key else 'no API key'}; audit log "
               f"{log.path if log is not None else 'off'})", err=True)
    uvicorn.run(create_app(engine, api_key=api_key or None), host=host, port=port, log_level=log_level,
                timeout_graceful_shutdown=5)


def _audit_log(enabled: bool | None, timeout: float):
    if enabled is None:
        enabled = os.environ.get("PHASEGPT_AUDIT", "") not in ("", "0", "false", "no")
    if not enabled:
        return None
    from phasegpt.audit import AuditLog

    return AuditLog(timeout=timeout)
