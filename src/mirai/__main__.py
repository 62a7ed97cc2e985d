"""``python -m mirai ARGS``: the same as the ``mirai`` command."""

import sys

from mirai.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
