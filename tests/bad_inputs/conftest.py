"""Bad-input tests: ``refusal.py`` (the shared checker and the row type) is importable from every
test file in this folder, and from the CLI rows the lead adds beside them."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
