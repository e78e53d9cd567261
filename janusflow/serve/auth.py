"""An API key for the whole server (``janusflow serve --api-key KEY``, or ``JANUSFLOW_API_KEY``).

Every route but ``/health`` then needs ``Authorization: Bearer KEY``, compared in constant time
(``hmac.compare_digest``); without it: 401 (an OpenAI error object on the OpenAI routes, with
``WWW-Authenticate: Bearer``).

A browser cannot add that header to the page's requests, so the page asks for the key once: a page
request without it gets a small form, whose key (posted to ``/login``) sets a cookie that the page's
own requests then carry. The cookie holds an HMAC of the key, not the key, is HttpOnly and
SameSite=Strict, is named after the port (two servers on one host keep their own), and opens the
page only: ``/v1/`` routes need the header. ``gradio_client`` drives the page with the header:
``Client(url, headers={"Authorization": "Bearer KEY"})``.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import urllib.parse

from starlette.datastructures import Headers
from starlette.requests import cookie_parser
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse

from ..errors import ConfigError
from .openai_schemas import LEGACY_PATHS, is_openai_path, openai_error_body

LOGIN_PATH = "/login"
OPEN_PATHS = ("/health",)
MAX_FORM_BYTES = 8192
CHALLENGE = {"WWW-Authenticate": "Bearer"}

FORM = """<!doctype html><html><head><meta charset="utf-8"><title>JanusFlow</title>
<style>body{{font-family:system-ui,sans-serif;max-width:26rem;margin:5rem auto;padding:0 1rem}}
input{{font-size:1rem;padding:.4rem;width:100%;box-sizing:border-box;margin:.4rem 0}}</style></head>
<body><h1>JanusFlow</h1><p>This server needs its API key.</p>{problem}
<form method="post" action="{action}"><input type="hidden" name="next" value="{next}">
<label>API key <input type="password" name="key" id="api-key" autofocus required></label>
<input type="submit" value="Open" id="api-key-submit"></form></body></html>"""


def login_page(next_path: str, problem: str = "", status: int = 401) -> HTMLResponse:
    note = f'<p style="color:#b00" id="api-key-problem">{html.escape(problem)}</p>' if problem else ""
    return HTMLResponse(FORM.format(problem=note, action=LOGIN_PATH, next=html.escape(next_path, quote=True)),
                        status_code=status)


def safe_next(path: str) -> str:
    """Where to go after the form: a path on this server (never another host: no open redirect)."""
    if not path.startswith("/") or path.startswith(("//", "/\\")):
        return "/"
    return path


class ApiKeyMiddleware:
    def __init__(self, app, api_key: str):
        if not isinstance(api_key, str) or not api_key.strip():
            raise ConfigError("the API key is empty")
        self.app = app
        self._key = api_key.encode("utf-8")
        self._cookie_value = hmac.new(self._key, b"janusflow page cookie", hashlib.sha256).hexdigest()

    def bearer_ok(self, header: str | None) -> bool:
        scheme, _, given = (header or "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        # headers arrive decoded as latin-1: encoding back gives the bytes the client sent (UTF-8)
        return hmac.compare_digest(given.strip().encode("latin-1", "replace"), self._key)

    @staticmethod
    def cookie_name(scope) -> str:
        server = scope.get("server") or (None, None)
        return f"janusflow_key_{server[1]}" if server[1] else "janusflow_key"

    def cookie_ok(self, scope, headers: Headers) -> bool:
        value = cookie_parser(headers.get("cookie", "")).get(self.cookie_name(scope), "")
        return hmac.compare_digest(value.encode("latin-1", "replace"), self._cookie_value.encode())

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket") or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        path, headers = scope["path"], Headers(scope=scope)
        if path == LOGIN_PATH and scope["type"] == "http":
            return await (await self.login(scope, receive, headers))(scope, receive, send)
        if self.bearer_ok(headers.get("authorization")) or \
                (not path.startswith("/v1/") and self.cookie_ok(scope, headers)):
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            return await send({"type": "websocket.close", "code": 1008})
        return await self.refusal(scope, headers)(scope, receive, send)

    def refusal(self, scope, headers: Headers):
        path = scope["path"]
        why = ("this server needs its API key: send the header Authorization: Bearer KEY"
               if not headers.get("authorization") else "the API key is wrong")
        if is_openai_path(path):
            return JSONResponse(openai_error_body(401, why, None, "invalid_api_key"), 401, headers=CHALLENGE)
        if path in LEGACY_PATHS:
            return JSONResponse({"error": why, "field": None}, 401, headers=CHALLENGE)
        if scope["method"] == "GET" and "text/html" in headers.get("accept", ""):
            query = scope.get("query_string", b"").decode("latin-1")
            return login_page(path + (f"?{query}" if query else ""))
        return JSONResponse({"error": why}, 401, headers=CHALLENGE)

    async def login(self, scope, receive, headers: Headers):
        """GET: the form. POST: the key from the form; right: the cookie and back to the page."""
        if scope["method"] != "POST":
            return login_page("/", status=200)
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if len(body) > MAX_FORM_BYTES:
                return login_page("/", "the form is too large", status=413)
            if not message.get("more_body", False):
                break
        form = urllib.parse.parse_qs(body.decode("utf-8", "replace"))
        key, next_path = (form.get("key") or [""])[0], safe_next((form.get("next") or ["/"])[0])
        if not hmac.compare_digest(key.encode("utf-8"), self._key):
            return login_page(next_path, "That key is wrong.")
        response = RedirectResponse(next_path, status_code=303)
        response.set_cookie(self.cookie_name(scope), self._cookie_value, httponly=True, samesite="strict", path="/")
        return response
