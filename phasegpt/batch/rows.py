"""The rows of a JSONL request file, each checked on its own, every error naming FILE:LINE and the field.

A row is ``{"prompt": "...", "context": ...}`` or OpenAI-style ``{"messages": [...], "context": ...}``;
any other fields are the caller's and pass through. Blank lines are not rows. The file is read
through a memory map (several processes on one host share its pages) and hashed, so a resumed job
can tell that it is still reading the same file.
"""

from __future__ import annotations

import hashlib
import json
import mmap
from pathlib import Path
from typing import Any

from phasegpt.distributed import JobError
from phasegpt.prompting import Context, Prompt, conversation, normalize_context, user_segments

JSON_TYPES = {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number",
              bool: "a boolean", type(None): "null"}


class RowError(JobError):
    """One bad row: ``FILE:LINE: field: problem and fix``.

    Attributes:
        path: the input file.
        line: the row's line number in it (1-based, blank lines counted).
        field: the field at fault (``prompt``, ``messages``, ``context``), or None when the line
            itself is not a JSON object.
        message: the problem and the fix.
    """

    def __init__(self, path: Path, line: int, field: str | None, message: str):
        self.path, self.line, self.field, self.message = path, line, field, message
        super().__init__(f"{path}:{line}: " + (f"{field}: " if field else "") + message)

    def to_dict(self) -> dict[str, Any]:
        """The ``error`` field a skipped row carries in the output."""
        return {"line": self.line, "field": self.field, "message": self.message}


class Rows:
    """The non-blank lines of a JSONL file, parsed on demand.

    Use as a context manager (it holds the file's memory map open).

    Attributes:
        path: the file.
        sha256: hex digest of its bytes.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        with self.path.open("rb") as f:
            size = f.seek(0, 2)
            self._data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        self.sha256 = hashlib.sha256(self._data).hexdigest()
        self._spans: list[tuple[int, int, int]] = []  # (line number, start, end) of each row
        data, at, line = self._data, 0, 1
        while at < len(data):
            end = data.find(b"\n", at)
            end = len(data) if end < 0 else end
            if data[at:end].strip():
                self._spans.append((line, at, end))
            at, line = end + 1, line + 1

    def __enter__(self) -> Rows:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if isinstance(self._data, mmap.mmap):
            self._data.close()

    def __len__(self) -> int:
        return len(self._spans)

    def line(self, i: int) -> int:
        """The line number of row ``i``."""
        return self._spans[i][0]

    def row(self, i: int) -> dict[str, Any]:
        """Row ``i`` as a JSON object.

        Raises:
            RowError: the line is not UTF-8, not JSON, or not a JSON object.
        """
        line, start, end = self._spans[i]
        raw = self._data[start:end]
        try:
            text = raw.decode("utf-8-sig" if start == 0 else "utf-8")  # an editor's byte-order mark
        except UnicodeDecodeError as e:
            raise self.error(i, None, f"not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1}); "
                                      "save the file as UTF-8") from None
        try:
            row = json.loads(text)
        except json.JSONDecodeError as e:
            raise self.error(i, None, f"not valid JSON ({e.msg} at column {e.colno}); each line must be "
                                      "one JSON object") from None
        if not isinstance(row, dict):
            raise self.error(i, None, f"the line is {JSON_TYPES.get(type(row), 'a value')}, not an object "
                                      'like {"prompt": "..."}')
        return row

    def request(self, i: int) -> tuple[dict[str, Any], Prompt, Context]:
        """Row ``i``, its request (a prompt string or a conversation) and its documents, checked.

        Everything a request can get wrong without the model is caught here: a missing, empty,
        enormous or mistyped prompt, a malformed conversation, malformed documents. (Too many
        tokens needs the tokenizer: see ``classify_file``.)

        Raises:
            RowError: naming the line and the field.
        """
        row = self.row(i)
        if ("prompt" in row) == ("messages" in row):
            which = "has both" if "prompt" in row else "needs"
            raise self.error(i, "prompt", f'{which} a "prompt" string or a "messages" list'
                                          + ("; keep one" if "prompt" in row else ""))
        field = "prompt" if "prompt" in row else "messages"
        prompt = row[field]
        if field == "prompt" and not isinstance(prompt, str):
            raise self.error(i, field, f"is {JSON_TYPES.get(type(prompt), 'a value')}, not a string; "
                                       'put a conversation in "messages"')
        if field == "messages" and not isinstance(prompt, list):
            raise self.error(i, field, f"is {JSON_TYPES.get(type(prompt), 'a value')}, not a list of "
                                       '{"role": ..., "content": ...} messages')
        try:
            _, _, question = conversation(prompt)
            user_segments(question)  # empty or enormous
        except ValueError as e:
            raise self.error(i, field, str(e)) from None
        context = row.get("context")
        try:
            normalize_context(context)
        except ValueError as e:
            raise self.error(i, "context", str(e)) from None
        return row, prompt, context

    def error(self, i: int, field: str | None, message: str) -> RowError:
        """A RowError for row ``i``."""
        return RowError(self.path, self.line(i), field, message)
