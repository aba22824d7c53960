"""``python -m adaptformer`` (and ``torchrun -m adaptformer``) run the CLI."""

import sys

from .cli import main

sys.exit(main())
