"""``python -m nwa.test --config configs/<recipe>.yaml --ckpt_path PATH``: evaluate a checkpoint."""

from __future__ import annotations

import sys

from nwa.cli import main

if __name__ == "__main__":
    main("test", sys.argv[1:])
