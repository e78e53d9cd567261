"""``janusflow serve``: the API and the web page on one model, on 127.0.0.1:7860 unless told otherwise.

Registered with the ``janusflow`` command's ``@command`` (see :mod:`janusflow.cli`); the server's
own dependencies (the ``demo`` extra) are imported only when it runs.
"""

from __future__ import annotations

import argparse
import logging
import os

from ..cli import MODEL, arg, command, model_dir, torch_dtype
from ..errors import JanusFlowError
from .limits import ServeLimits

LIMITS_HELP = "; ".join(f"{name} ({default})" for name, default, _ in ServeLimits.documentation())


class MissingExtraError(JanusFlowError):
    """The server's packages are not installed."""


@command("serve", "serve the HTTP API and the web page (needs the demo extra)",
         arg("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"),
         arg("--port", type=int, default=7860),
         arg("--vae", metavar="DIR", help="diffusers AutoencoderKL folder (default: MODEL/vae)"),
         arg("--limit", action="append", default=[], metavar="NAME=VALUE",
             help=f"change a limit (repeatable). Limits and defaults: {LIMITS_HELP}"),
         arg("--no-ui", action="store_true", help="serve the API only, no web page"),
         arg("--log-level", default="info", choices=("debug", "info", "warning", "error")),
         *MODEL)
def serve_main(args: argparse.Namespace) -> int:
    """Load the model and serve until interrupted."""
    if not 0 <= args.port <= 65535:
        raise JanusFlowError(f"--port must be within 0..65535, got {args.port}")
    limits = ServeLimits().replace(args.limit)  # bad limits fail before the model loads
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
    engine = load_engine(model_dir(args), args.vae, device=args.device, dtype=torch_dtype(args),
                         quantize=args.quantize)
    app = create_app(engine, limits, ui=not args.no_ui)
    print(f"janusflow: serving on http://{args.host}:{args.port}/ (API docs at /docs)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False)
    return 0
