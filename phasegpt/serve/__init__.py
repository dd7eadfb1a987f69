"""``phasegpt serve``: an OpenAI-compatible HTTP server with the verdict in every response.

``protocol`` holds the request and response shapes, ``app`` the HTTP layer (Starlette), ``engine``
the one object that owns the Model and every request's way to it, ``errors`` OpenAI's error body.

    from phasegpt.serve import Engine, create_app
    app = create_app(Engine(phasegpt.load()), api_key="...")   # any ASGI server runs it
"""

from phasegpt.serve.app import create_app
from phasegpt.serve.engine import Engine, Limits

__all__ = ["Engine", "Limits", "create_app"]
