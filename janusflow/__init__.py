"""JanusFlow: unified image understanding and rectified-flow generation."""
__version__ = "0.1.0"

# diffusers-side classes, imported on first use (``import janusflow`` stays light)
_LAZY = {
    "JanusFlowPipeline": "pipeline",
    "JanusFlowImg2ImgPipeline": "pipeline_img2img",
    "JanusFlowInpaintPipeline": "pipeline_img2img",
    "FlowMatchMidpointScheduler": "schedulers",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
