"""Mirai: autoregressive image generation with foresight alignment.

The package root imports nothing of its own (``tests/test_architecture.py``): ``import mirai``
stays cheap, and each layer is imported where it is used.
"""

from importlib.metadata import PackageNotFoundError, version

# The distribution is ``mirai-foresight`` (``mirai`` on PyPI is another project); its version,
# set once in pyproject.toml, is read from the installed metadata.
DISTRIBUTION = "mirai-foresight"

try:
    __version__ = version(DISTRIBUTION)
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"
