"""The README's examples run as they are written: every ```python block of README.md, in order,
in one session (top-level ``await`` allowed), in a subprocess, on a real SQLite file. The
publish/subscribe example runs its billing service until SIGTERM, and its handler must have
saved the invoice, with nothing dead-lettered."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
import textwrap
from pathlib import Path

import pytest

import tidings
from tests.integration.readme_session import DONE

ROOT = Path(__file__).resolve().parents[2]
SESSION = Path(__file__).with_name("readme_session.py")
#: A fence, possibly indented (in a list item), and its content up to the closing fence.
FENCE = re.compile(r"^(?P<indent> *)```python\n(?P<body>.*?)^(?P=indent)```$", re.DOTALL | re.MULTILINE)
#: The access control example reads a policy file; the session is given this one.
POLICY = """
[principals.orders]
publish = ["order.>"]
subscribe = ["payment.*"]
"""


def python_blocks(text: str) -> list[tuple[int, str]]:
    """Each ```python block with the line its code starts on, dedented (a block in a list item
    is indented in the Markdown, not in Python)."""
    return [
        (text.count("\n", 0, match.start("body")) + 1, textwrap.dedent(match.group("body")))
        for match in FENCE.finditer(text)
    ]


def test_the_blocks_are_found() -> None:
    text = "intro\n```python\nx = 1\n```\n- a list item:\n\n  ```python\n  if x:\n      y = 2\n  ```\n"
    assert python_blocks(text) == [(3, "x = 1\n"), (8, "if x:\n    y = 2\n")]
    blocks = python_blocks(ROOT.joinpath("README.md").read_text(encoding="utf-8"))
    assert len(blocks) >= 8 and any("billing.run()" in source for _, source in blocks)


async def test_the_readme_examples_run_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = python_blocks(ROOT.joinpath("README.md").read_text(encoding="utf-8"))
    (tmp_path / "blocks.json").write_text(json.dumps(blocks))
    (tmp_path / "policy.toml").write_text(POLICY)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    env["PYTHONPATH"] = str(ROOT)  # the saga example imports the shop demo's events
    monkeypatch.delenv("TIDINGS_STORE", raising=False)
    session = await asyncio.create_subprocess_exec(
        sys.executable,
        str(SESSION),
        "blocks.json",
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    output = asyncio.ensure_future(session.communicate())
    database = tmp_path / ".tidings" / "tour.db"
    invoice: list[str] = []
    try:
        async with asyncio.timeout(60):
            while not invoice and not output.done():
                await asyncio.sleep(0.2)
                if database.exists():
                    async with tidings.App("readme-check", store=f"sqlite:///{database}") as checker:
                        invoice = [r.envelope.type for r in await checker.store.read_stream("invoice-42")]
            if not output.done():
                session.send_signal(signal.SIGTERM)  # the billing service stops; later blocks run
            await asyncio.wait_for(asyncio.shield(output), 30)
    finally:
        if session.returncode is None:
            session.kill()
        out, err = (text.decode() for text in await output)
        print(out, err, sep="\n")  # shown by pytest when the test fails
    assert session.returncode == 0, f"the README's examples failed:\n{out}\n{err}"
    assert DONE in out, out
    assert invoice == ["InvoicePaid"]
    async with tidings.App("readme-check", store=f"sqlite:///{database}") as checker:
        assert await checker.dead_letters() == []
