"""``python -m toptune_core``: runs the command line (``toptune_core.cli.main``)."""

import sys

from toptune_core.cli.main import main

sys.exit(main())
