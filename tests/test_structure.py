"""The shape of the code that issue 11 set: light commands stay light, no import cycles, no overlong
functions, one module for the run layout."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "gwi"
HEAVY = ("torch", "torch_geometric", "e3nn", "deepwave", "matplotlib", "optuna")
MAX_LINES = 80


def _modules() -> dict[str, Path]:
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        parts = list(p.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = p
    return out


# -- light commands ---------------------------------------------------------------------------------

_PROBE = """
import json, sys
from gwi.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as e:
    code = e.code
print("\\n" + json.dumps({"code": code, "heavy": [m for m in %r if m in sys.modules]}))
""" % (HEAVY,)


def _loaded(args: list[str], home: Path) -> dict:
    env = {**os.environ, "GWI_HOME": str(home)}
    out = subprocess.run([sys.executable, "-c", _PROBE, *args], capture_output=True, text=True, timeout=120,
                         cwd=ROOT, env=env)
    assert out.stdout.strip(), out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("args", [
    ["dispatch", "--dry-run", "jobs/demo.yaml"],
    ["status"],
    ["status", "--json"],
    ["platforms"],
    ["--help"],
])
def test_commands_that_only_read_load_no_heavy_library(tmp_path, args):
    r = _loaded(args, tmp_path / "home")
    assert r["code"] in (0, None), r
    assert r["heavy"] == [], f"gwi {' '.join(args)} imported {r['heavy']}"


def test_history_loads_no_heavy_library(tmp_path):
    r = _loaded(["history", "demo/data"], tmp_path / "home")  # nothing dispatched: an error, but a light one
    assert r["heavy"] == [], r


# -- imports ----------------------------------------------------------------------------------------

def _imports(mod: str, path: Path, known: dict[str, Path]) -> set[str]:
    """gwi modules that ``mod`` imports anywhere in its body (lazy imports count: a cycle through a
    function-level import is still a cycle in the design)."""
    is_pkg = path.name == "__init__.py"
    package = mod if is_pkg else mod.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    typing_only = {id(n) for node in ast.walk(tree)  # `if TYPE_CHECKING:` imports never run
                   if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING"
                   for stmt in node.body for n in ast.walk(stmt)}
    out = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")
                parent = parent[:len(parent) - (node.level - 1)]
                base = ".".join(parent + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        out |= {n for n in names if n in known and n != mod}
    return out


def test_no_import_cycle():
    known = _modules()
    graph = {m: _imports(m, p, known) for m, p in known.items()}
    # a package's __init__ importing its own modules (to register them) is how registration works
    graph = {m: {d for d in deps if not (known[m].name == "__init__.py" and d.startswith(m + "."))}
             for m, deps in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                cycle = stack[stack.index(d):] + [d]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


# -- function length --------------------------------------------------------------------------------

def test_no_function_over_80_lines_without_a_reason():
    long = []
    for mod, path in _modules().items():
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                above = lines[node.lineno - 2] if node.lineno >= 2 else ""
                if n > MAX_LINES and "long because" not in above:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, "functions over 80 lines (say why in a '# long because ...' comment above, or split):\n" + \
        "\n".join(long)


MAX_MODULE_LINES = 800


def test_no_module_over_800_lines():
    """A room a newcomer can hold (issue 28): a module that grows past this is split by concept."""
    big = [f"{p.relative_to(ROOT)} ({n} lines)" for p in _modules().values()
           if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES]
    assert not big, "modules over 800 lines:\n" + "\n".join(big)


def test_the_cli_groups_keep_their_parsers_beside_their_handlers():
    """Every command is registered through its group's COMMANDS table, and every handler a parser
    sets lives in the same module as that parser (issue 28: the parser beside the handler)."""
    import argparse

    from gwi import cli

    def handlers(p):
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for q in action.choices.values():
                    yield from handlers(q)
        if p.get_default("fn") is not None:
            yield p.get_default("fn")

    for group in cli.GROUPS:
        for name, add in group.COMMANDS.items():
            parser = argparse.ArgumentParser()
            add(parser.add_subparsers())
            fns = list(handlers(parser))
            assert fns, f"{group.__name__}: gwi {name} sets no handler"
            for fn in fns:
                assert fn.__module__ == group.__name__, \
                    f"gwi {name}: parser in {group.__name__}, handler {fn.__name__} in {fn.__module__}"


# -- the run layout ---------------------------------------------------------------------------------

RUN_PATHS = ("checkpoints/", "latest.json", "progress.json", "metrics.json", "attempts/", "/runs/")


def _code_strings(tree: ast.AST):
    """String constants that are not docstrings."""
    docs = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docs.add(id(first.value))
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            yield node


def test_only_runs_py_spells_the_run_layout():
    bad = []
    for mod, path in _modules().items():
        if mod == "gwi.runs":
            continue
        for node in _code_strings(ast.parse(path.read_text(), str(path))):
            hit = next((p for p in RUN_PATHS if p in node.value), None)
            if hit:
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: {hit!r} in {node.value[:60]!r}")
    assert not bad, "run paths spelled outside gwi/runs.py:\n" + "\n".join(bad)


# -- model cards ------------------------------------------------------------------------------------

def test_model_cards_read_from_source_equal_the_imported_ones():
    from gwi.models import registry

    for name in registry.list_models():
        registry.create_model(name, "tiny")  # imports the module, whose decorator registers the card
        assert registry._REGISTRY[name][1] == registry.model_card(name), name


def test_compose_is_pinned_local_and_has_no_default_password():
    """docker-compose.yml: images pinned (no :latest), ports on 127.0.0.1 only, credentials only from
    .env (no default), no GPU reservation (docker-compose.gpu.yml adds it), gwi under an init."""
    import yaml

    root = Path(__file__).resolve().parents[1]
    text = (root / "docker-compose.yml").read_text()
    compose = yaml.safe_load(text)
    for name, svc in compose["services"].items():
        image = svc.get("image", "")
        assert not image.endswith(":latest") or "build" in svc, f"{name}: {image} is not pinned"
        for port in svc.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name}: port {port} is published on every interface"
        assert "deploy" not in svc, f"{name}: a GPU reservation makes compose fail on a CPU host"
    assert "MINIO_ROOT_PASSWORD:?" in text and "change-me" not in text and ":-gwi-secret" not in text
    assert compose["services"]["gwi"]["init"] is True
    gpu = yaml.safe_load((root / "docker-compose.gpu.yml").read_text())
    assert gpu["services"]["gwi"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert ".env" in (root / ".gitignore").read_text().split()


def test_the_image_pins_the_torch_the_readme_installs():
    """One torch version: the README's two commands, the Dockerfile's TORCH_VERSION and the test
    image's CPU wheel (.ci/docker-image.sh)."""
    import re

    root = Path(__file__).resolve().parents[1]
    readme = set(re.findall(r"torch==([\d.]+)", (root / "README.md").read_text()))
    docker = re.findall(r"^ARG TORCH_VERSION=([\d.]+)$", (root / "Dockerfile").read_text(), re.M)
    ci = re.findall(r"torch==([\d.]+)", (root / ".ci" / "docker-image.sh").read_text())
    assert len(readme) == 1 and docker == list(readme) and set(ci) == readme, (readme, docker, ci)
