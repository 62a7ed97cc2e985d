"""Mirai: autoregressive image generation with foresight alignment."""

__version__ = "0.1.0"
