"""``python -m eventbus``: the same as the ``eventbus`` command."""

import sys

from eventbus.cli import main

sys.exit(main())
