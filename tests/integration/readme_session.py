"""Runs Python blocks one after another in one namespace, as a session where ``await`` may stand
at the top level (IPython, ``python -m asyncio``) would: ``python readme_session.py blocks.json``,
the file holding ``[[line, source], ...]``. Prints a line before each block, and one at the end."""

from __future__ import annotations

import ast
import asyncio
import inspect
import json
import sys
import types
from pathlib import Path

DONE = "readme: every block ran"


async def run(blocks: list[tuple[int, str]]) -> None:
    # A module of its own, so that no name of this script leaks into the examples (a missing
    # import in a block fails as it would for a reader) and classes find their module.
    session = types.ModuleType("readme")
    sys.modules[session.__name__] = session
    for line, source in blocks:
        print(f"readme: block at line {line}", flush=True)
        code = compile(source, f"README.md:{line}", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        result = eval(code, session.__dict__)  # noqa: S307 - the README's own examples, run on purpose
        if inspect.iscoroutine(result):  # the block awaits at the top level
            await result
    print(DONE, flush=True)


if __name__ == "__main__":
    asyncio.run(run([(line, source) for line, source in json.loads(Path(sys.argv[1]).read_text())]))
