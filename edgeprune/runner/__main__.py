"""``python -m edgeprune.runner`` (the zipapp's own ``__main__`` does the same)."""

import sys

from .cli import main

sys.exit(main())
