"""`janusflow serve`: an HTTP API and a web page on one model (``pip install 'janusflow[demo]'``).

engine.py   the Engine interface and ModelEngine (a model folder)   limits.py  the limits
worker.py   one model run at a time, a bounded queue, timeouts       schemas.py request/response bodies
app.py      the FastAPI app, errors, logging                          ui.py      the Gradio page
cli.py      the `serve` subcommand                                    tiny_model.py a tiny random model
"""

from .limits import ServeLimits

__all__ = ["ServeLimits"]
