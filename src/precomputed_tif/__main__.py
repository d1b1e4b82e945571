"""``python -m precomputed_tif`` is the converter's command line."""

import sys

from .cli.convert import main

sys.exit(main())
