"""Side-by-side training benchmark of fmlp and its peers: ``fmlp bench`` under its script name.

The benchmark lives in :mod:`fmlp.bench`; its docstring (the end of ``--help``) explains what
is measured and how.
Run from the repository root: ``python scripts/bench.py --help``.
"""

import sys

from fmlp.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
