"""The structure docs/architecture.md describes, checked: no import cycles between files, the
chat protocol free of rollouts, and no module or function too long to read (issue 19)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = [ROOT / "src", ROOT / "integrations/langchain", ROOT / "integrations/llama-index"]
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80


def _modules() -> dict[str, Path]:
    found = {}
    for root in PACKAGES:
        for path in root.rglob("*.py"):
            if "tests" in path.relative_to(root).parts:
                continue
            parts = path.relative_to(root).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The project's modules this file imports, at the top or inside a function."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, *([node.module] if node.module else [])])
            for alias in node.names:
                full = f"{base}.{alias.name}"
                out.add(full if full in MODULES else base)
        elif isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
    return {m for m in out if m in MODULES and m != name}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _reachable(start: str) -> set[str]:
    seen, todo = set(), list(GRAPH[start])
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo += GRAPH[module]
    return seen


def test_the_checker_sees_the_packages():
    assert {"wandb_serverless.chat.protocol", "langchain_wandb.chat_models"} <= MODULES.keys()
    assert "wandb_serverless.chat.parse" in GRAPH["wandb_serverless.calls"]


def test_no_file_imports_itself_through_others():
    cycles = sorted(name for name in GRAPH if name in _reachable(name))
    assert cycles == []


def test_the_chat_protocol_knows_nothing_of_rollouts():
    chat = [name for name in MODULES if name.startswith("wandb_serverless.chat")]
    used = set().union(*(_reachable(name) for name in chat))
    assert not {m for m in used if m.startswith("wandb_serverless.rollouts")}


def test_the_api_client_knows_nothing_of_the_recorder():
    """The training API's client and types use the trajectory data model, not the package
    that records and stores rollouts (issue 28)."""
    api = [name for name in MODULES if name.startswith("wandb_serverless.api")]
    used = set().union(*(_reachable(name) for name in api))
    assert "wandb_serverless.trajectory" in used
    assert not {m for m in used if m.startswith("wandb_serverless.rollouts")}


def test_adapters_and_hooks_do_not_import_each_other():
    assert "langchain_wandb.callbacks" not in _reachable("langchain_wandb.chat_models")
    assert "llama_index.llms.wandb.instrumentation" not in _reachable("llama_index.llms.wandb.base")


def test_no_module_or_function_is_too_long():
    long_modules, long_functions = [], []
    for name, path in MODULES.items():
        source = path.read_text()
        if len(source.splitlines()) > MAX_MODULE_LINES:
            long_modules.append(name)
        functions = [
            node
            for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        ]
        long_functions += [
            f"{name}.{f.name}"
            for f in functions
            if f.end_lineno - f.lineno + 1 > MAX_FUNCTION_LINES
        ]
    assert long_modules == [] and long_functions == []
