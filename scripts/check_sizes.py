"""The size rule of memlens: no module over 400 lines, no function over 80 lines.

    python scripts/check_sizes.py [PACKAGE ...]     # default: memlens

Prints each module or function over its limit (path, name, lines) and exits 1 if any is.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80


def oversized(root: Path) -> list[tuple[str, str, int]]:
    """``(path, name, lines)`` of every module and function under ``root`` over its limit."""
    out = []
    for path in sorted(root.rglob("*.py")):
        text = path.read_text()
        n = len(text.splitlines())
        if n > MAX_MODULE_LINES:
            out.append((str(path), "<module>", n))
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                span = node.end_lineno - first + 1
                if span > MAX_FUNCTION_LINES:
                    out.append((str(path), f"{node.name} (line {node.lineno})", span))
    return out


def main(argv: list[str]) -> int:
    roots = [Path(a) for a in argv] or [Path("memlens")]
    bad = [x for r in roots for x in oversized(r)]
    for path, name, n in bad:
        limit = MAX_MODULE_LINES if name == "<module>" else MAX_FUNCTION_LINES
        print(f"{path}: {name}: {n} lines (limit {limit})")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
