"""JanusFlow: unified image understanding and rectified-flow generation."""
__version__ = "0.1.0"
