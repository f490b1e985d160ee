"""``python -m efficientdet`` (the form torchrun launches)."""

import sys

from .cli import main

sys.exit(main())
