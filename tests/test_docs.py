"""Every example in README.md runs and prints exactly what the README shows.

The doctests run in a fresh interpreter with JAX's default settings, as a reader would run
them, not under this suite's strict promotion flags.
"""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("doc", ["README.md", "docs/tutorial.md"])
def test_doc_examples_run(doc: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "doctest", "-o", "ELLIPSIS", doc],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert ">>>" in (ROOT / doc).read_text()
