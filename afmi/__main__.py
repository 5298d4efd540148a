"""``python -m afmi``: the same as the ``afmi`` command."""

import sys

from afmi.cli import main

sys.exit(main())
