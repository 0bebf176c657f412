"""What DESIGN.md promises about the code's shape, checked on the source itself."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "smtp_tarpit"


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def _modules(folder: str) -> list[Path]:
    return sorted((PACKAGE / folder).rglob("*.py"))


def test_protocol_and_policy_are_pure() -> None:
    for path in _modules("protocol") + _modules("policy"):
        imports = _imports(path)
        assert "asyncio" not in imports and "socket" not in imports, path
        ours = {m for m in imports if m.startswith("smtp_tarpit")}
        allowed = ("smtp_tarpit.protocol", "smtp_tarpit.policy")
        assert all(m.startswith(allowed) for m in ours), (path, ours)


def test_nothing_imports_server_or_cli_except_server_and_cli() -> None:
    for path in PACKAGE.rglob("*.py"):
        if path.parent.name == "server" or path.name in ("cli.py", "__main__.py"):
            continue
        ours = {m for m in _imports(path) if m.startswith("smtp_tarpit.")}
        assert not any(m.startswith(("smtp_tarpit.server", "smtp_tarpit.cli")) for m in ours), path


def test_reply_texts_live_only_in_the_catalogue() -> None:
    reply_literal = re.compile(r"""["'](?:[245]\d\d[ -]|[245]\.\d{1,3}\.\d{1,3} )""")
    for path in PACKAGE.rglob("*.py"):
        if path.name == "replies.py":
            continue
        assert not reply_literal.search(path.read_text()), f"a reply text outside the catalogue: {path}"


def test_only_the_executor_writes_to_client_sockets() -> None:
    for path in (PACKAGE / "server").rglob("*.py"):
        if path.name == "executor.py":
            continue
        assert not re.search(r"transport\.write", path.read_text()), path
