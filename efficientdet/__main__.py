"""``python -m efficientdet`` (the form torchrun launches)."""

import sys

from .cli.main import main

sys.exit(main())
