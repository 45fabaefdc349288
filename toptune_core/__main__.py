import sys

from toptune_core.cli.main import main

sys.exit(main())
