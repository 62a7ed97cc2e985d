"""DataLoader worker processes, seen from the main process: their errors as the one line a user reads."""

from __future__ import annotations

from torch.utils.data import DataLoader

from mirai.errors import DataError


def reraised_one_line(loader: DataLoader):
    """The loader's batches; a ``DataError`` raised in a worker process comes back with the
    worker's traceback in its message, so keep only the original one-line message. Closing the
    generator stops the worker processes."""
    batches = iter(loader)
    try:
        yield from batches
    except DataError as err:
        text = str(err)
        if "Traceback" in text:
            text = text.strip().splitlines()[-1].split("DataError: ", 1)[-1]
        raise DataError(text) from None
    finally:
        shutdown = getattr(batches, "_shutdown_workers", None)
        if shutdown is not None:  # stop worker processes now, not whenever garbage collection gets to them
            shutdown()
