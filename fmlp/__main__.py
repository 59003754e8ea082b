"""``python -m fmlp`` is the ``fmlp`` command."""

import sys

from fmlp.cli import main

sys.exit(main())
