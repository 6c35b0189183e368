"""loadgen's structure: no import cycles, the library below the commands, every package packaged.

The import graph is read from the source (every ``import`` statement, at
module level or inside a function), so a cycle hidden by a function-level
import counts; a slow test also imports each module alone in a fresh
interpreter.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from loadgen.lib.peers import PEERS

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "loadgen"


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(source: str, module: str, is_package: bool) -> set[str]:
    """Every dotted name an import statement anywhere in ``source`` refers to (``from a import b``: a and a.b)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's package
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names.add(target)
            names.update(f"{target}.{alias.name}" for alias in node.names)
    return names


def import_graph(sources: dict[str, tuple[str, bool]]) -> dict[str, set[str]]:
    """Module -> the modules of ``sources`` it imports, its own parent packages included (imported first)."""
    graph: dict[str, set[str]] = {}
    for module, (source, is_package) in sources.items():
        edges = set()
        for name in imported_names(source, module, is_package):
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # importing a.b.c imports a, a.b and a.b.c
                prefix = ".".join(parts[:i])
                if prefix in sources:
                    edges.add(prefix)
        parts = module.split(".")
        edges.update(".".join(parts[:i]) for i in range(1, len(parts)) if ".".join(parts[:i]) in sources)
        edges.discard(module)
        graph[module] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def loadgen_sources() -> dict[str, tuple[str, bool]]:
    return {module_name(path): (path.read_text(encoding="utf-8"), path.name == "__init__.py")
            for path in sorted(PACKAGE.rglob("*.py"))}


def test_the_cycle_finder_sees_a_cycle_closed_inside_a_function() -> None:
    """a imports b at the top; b imports a only inside a function: still a cycle (and a chain is not one)."""
    sources = {
        "pkg": ("", True),
        "pkg.a": ("from pkg.b import helper\n", False),
        "pkg.b": ("def helper():\n    from pkg import a\n    return a\n", False),
        "pkg.c": ("import pkg.a\n", False),
    }
    assert find_cycle(import_graph(sources)) == ["pkg.a", "pkg.b", "pkg.a"]
    sources["pkg.b"] = ("def helper():\n    return 1\n", False)
    assert find_cycle(import_graph(sources)) is None
    assert find_cycle(import_graph({"p": ("from . import q\n", True), "p.q": ("", False)})) == ["p", "p.q", "p"]


def test_loadgen_has_no_import_cycles() -> None:
    """No loadgen module imports, at any depth and from any function, one that imports it back."""
    graph = import_graph(loadgen_sources())
    assert len(graph) > 20, sorted(graph)
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_library_knows_nothing_of_the_command_line() -> None:
    """loadgen.lib imports neither the commands nor the CLI; the peer servers import no loadgen but their own."""
    graph = import_graph(loadgen_sources())
    for module, edges in graph.items():
        if module.startswith("loadgen.lib"):
            upward = {e for e in edges if e.startswith(("loadgen.commands", "loadgen.cli"))}
            assert not upward, f"{module} imports {sorted(upward)}"
        if module.startswith("loadgen.peer_servers."):
            other = {e for e in edges if not e.startswith("loadgen.peer_servers") and e != "loadgen"}
            assert not other, f"{module} imports {sorted(other)}"


_FLAG = re.compile(r"(?<![\w-])--?[a-zA-Z][\w-]*")


def test_library_errors_name_no_flags() -> None:
    """Errors raised in loadgen.lib name the input at fault, never a command-line flag (the CLI adds those)."""
    found = []
    for path in sorted((PACKAGE / "lib").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Raise) or node.exc is None:
                continue
            texts = [n.value for n in ast.walk(node.exc) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
            flags = [m for text in texts for m in _FLAG.findall(text)]
            if flags:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {flags}")
    assert not found, "library errors naming flags:\n" + "\n".join(found)


def test_pyproject_packages_every_loadgen_package() -> None:
    """Each folder of loadgen with an __init__.py is listed in pyproject (else `pip install .` drops it,
    as it would drop the peer servers), and twisted/plugins stays without one."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    packages = {module_name(init) for init in PACKAGE.rglob("__init__.py")}
    assert "loadgen.peer_servers" in packages
    assert packages <= listed, f"not in pyproject's packages: {sorted(packages - listed)}"
    assert not (ROOT / "twisted" / "plugins" / "__init__.py").exists()
    assert all(peer.module.rsplit(".", 1)[0] in listed for peer in PEERS)


@pytest.mark.slow
def test_every_module_imports_alone_in_a_fresh_interpreter() -> None:
    """Each loadgen module imports first in a new interpreter (an import cycle fails one of them).

    Peer servers whose framework is not installed (the ``peers`` extra) are skipped.
    """
    missing = {peer.module for peer in PEERS if peer.missing()}
    modules = [m for m in loadgen_sources() if m not in missing and not m.endswith("__main__")]
    children = {m: subprocess.Popen([sys.executable, "-c", f"import {m}"], cwd=ROOT, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True) for m in modules}
    failed = {}
    for module, child in children.items():
        out, _ = child.communicate(timeout=60)
        if child.returncode != 0:
            failed[module] = out.strip().splitlines()[-1:]
    assert not failed, failed


def readme_layout() -> list[str]:
    """The paths listed in README's Layout block (the first word of each line)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text[text.index("## Layout"):]
    block = block[block.index("```") + 3:]
    block = block[block.index("\n") + 1:block.index("```")]
    return [line.split()[0] for line in block.splitlines() if line.strip()]


def test_readme_layout_lists_every_loadgen_module_and_nothing_gone() -> None:
    """README's Layout names each loadgen module (a listed folder covers its files) and no path that is gone."""
    listed = [path for path in readme_layout() if path.startswith(("loadgen/", "bench/"))]
    gone = [path for path in listed if not (ROOT / path).exists()]
    assert not gone, f"README's Layout lists paths that do not exist: {gone}"
    folders = tuple(path for path in listed if path.endswith("/"))
    modules = [str(path.relative_to(ROOT)) for path in sorted(PACKAGE.rglob("*.py"))
               if path.name not in ("__init__.py", "__main__.py")]
    unlisted = [m for m in modules if m not in listed and not m.startswith(folders)]
    assert not unlisted, f"README's Layout does not list: {unlisted}"
