"""``janusflow serve``: the API and the web page on one model, on 127.0.0.1:7860 unless told otherwise.

Registered with the ``janusflow`` command's ``@command`` (see :mod:`janusflow.cli`); the server's
own dependencies (the ``demo`` extra) are imported only when it runs.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys

from ..cli import MODEL, arg, command, model_dir, torch_dtype
from ..errors import JanusFlowError
from .limits import ServeLimits

LIMITS_HELP = "; ".join(f"{name} ({default})" for name, default, _ in ServeLimits.documentation())
API_KEY_VARIABLE = "JANUSFLOW_API_KEY"


class MissingExtraError(JanusFlowError):
    """The server's packages are not installed."""


@command("serve", "serve the HTTP API and the web page (needs the demo extra)",
         arg("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"),
         arg("--port", type=int, default=7860),
         arg("--vae", metavar="DIR", help="diffusers AutoencoderKL folder (default: MODEL/vae)"),
         arg("--limit", action="append", default=[], metavar="NAME=VALUE",
             help=f"change a limit (repeatable). Limits and defaults: {LIMITS_HELP}"),
         arg("--no-ui", action="store_true", help="serve the API only, no web page"),
         arg("--api-key", metavar="KEY", default=None,
             help=f"require 'Authorization: Bearer KEY' on every route but /health (the page asks for it once); "
                  f"default: ${API_KEY_VARIABLE} when set, else no key"),
         arg("--allow-remote-images", action="store_true",
             help="let chat messages give http(s) image URLs, fetched by the server within "
                  "remote_image_timeout_s and max_image_bytes (default: data: URLs only)"),
         arg("--model-id", default=None, help="the model's name in the OpenAI routes (default: the model folder's name)"),
         arg("--log-level", default="info", choices=("debug", "info", "warning", "error")),
         *MODEL)
def serve_main(args: argparse.Namespace) -> int:
    """Load the model and serve until interrupted."""
    if not 0 <= args.port <= 65535:
        raise JanusFlowError(f"--port must be within 0..65535, got {args.port}")
    limits = ServeLimits().replace(args.limit)  # bad limits fail before the model loads
    api_key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_VARIABLE) or None
    if api_key is not None and not api_key.strip():
        raise JanusFlowError("--api-key is empty")
    if api_key is None and not is_loopback(args.host):
        print(f"janusflow: warning: serving on {args.host} without an API key: anyone who can reach this address "
              f"can use the model (pass --api-key KEY or set {API_KEY_VARIABLE})", file=sys.stderr, flush=True)
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as e:
        raise MissingExtraError(f"the server needs the demo extra ({e.name} is missing): "
                                "pip install 'janusflow[demo]'") from None
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline: no telemetry calls
    from .app import create_app
    from .engine import load_engine

    level = getattr(logging, args.log_level.upper())
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("janusflow.serve").setLevel(level)
    engine = load_engine(model_dir(args), args.vae, device=args.device, dtype=torch_dtype(args), model_id=args.model_id,
                         quantize=args.quantize)
    app = create_app(engine, limits, ui=not args.no_ui, api_key=api_key, allow_remote_images=args.allow_remote_images)
    print(f"janusflow: serving {engine.model_id} on http://{args.host}:{args.port}/ (API docs at /docs"
          f"{'; API key required' if api_key else ''})", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False)
    return 0


def is_loopback(host: str) -> bool:
    """127.0.0.1, ::1, localhost: this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
