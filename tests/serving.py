"""Start ``phasegpt serve`` for real in a subprocess on a free loopback port, and talk to it over HTTP.

    with Server(["--model", str(tiny_dir), "--head", str(head)], home=tmp_path) as server:
        status, headers, body = server.request("GET", "/health")
        client = server.openai()          # the official openai client, pointed at it
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START = "from phasegpt.cli import main; main()"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A running ``phasegpt serve`` (stopped and its log kept in ``self.log`` on exit)."""

    def __init__(self, args: list[str], *, home: Path, env: dict | None = None, api_key: str | None = None,
                 timeout: float = 120):
        self.args, self.home, self.api_key, self.timeout = args, Path(home), api_key, timeout
        self.env = {**os.environ, "PHASEGPT_HOME": str(self.home), "PYTHONPATH": str(ROOT), **(env or {})}
        self.env.pop("PHASEGPT_API_KEY", None)
        self.port = free_port()
        self.log = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> Server:
        self.home.mkdir(parents=True, exist_ok=True)
        self._log_file = open(self.home / "server.log", "w+")
        cmd = [sys.executable, "-c", START, "serve", "--port", str(self.port), "--log-level", "warning", *self.args]
        if self.api_key:
            cmd += ["--api-key", self.api_key]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=self._log_file, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"phasegpt serve exited with {self.proc.returncode}:\n{self.read_log()}")
            try:
                if self.request("GET", "/health")[0] == 200:
                    return self
            except OSError:
                time.sleep(0.2)
        self.__exit__()
        raise RuntimeError(f"phasegpt serve did not answer /health within {self.timeout} s:\n{self.log}")

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # uvicorn shuts down gracefully on SIGTERM
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log = self.read_log()
        self._log_file.close()

    def read_log(self) -> str:
        self._log_file.flush()
        return (self.home / "server.log").read_text()

    def request(self, method: str, path: str, body: bytes | str | dict | None = None,
                headers: dict | None = None, key: bool = True) -> tuple[int, dict, bytes]:
        """One raw HTTP request: (status, headers with lower-case names, body bytes)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
        try:
            if isinstance(body, dict):
                body = json.dumps(body)
            hdrs = {"Content-Type": "application/json", **(headers or {})}
            if key and self.api_key:
                hdrs.setdefault("Authorization", f"Bearer {self.api_key}")
            conn.request(method, path, body=body, headers=hdrs)
            r = conn.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            conn.close()

    def json(self, method: str, path: str, body=None, **kw) -> tuple[int, dict]:
        status, _, data = self.request(method, path, body, **kw)
        return status, json.loads(data)

    def openai(self, **kwargs):
        import openai

        kwargs.setdefault("api_key", self.api_key or "unused")
        return openai.OpenAI(base_url=self.url, max_retries=0, timeout=self.timeout, **kwargs)


def sse_events(raw: bytes) -> list:
    """The ``data:`` payloads of a server-sent event stream, JSON-decoded ("[DONE]" kept as text)."""
    out = []
    for block in raw.decode().split("\n\n"):
        for line in block.splitlines():
            if line.startswith("data: "):
                data = line[len("data: "):]
                out.append(data if data == "[DONE]" else json.loads(data))
    return out
