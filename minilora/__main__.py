"""``python -m minilora``: the same command line as ``minilora``."""

import sys

from .cli import main

sys.exit(main())
