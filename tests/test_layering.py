"""Import layering of ``blockzoo/``: no import cycles, ``ops`` below configs and registry, ``blocks`` calling
``blockzoo.ops`` rather than kernel files. Read from the source (every import, function-local ones too)."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "blockzoo"
OPS_MUST_NOT_IMPORT = ("blockzoo.registry", "blockzoo.config", "blockzoo.blocks", "blockzoo.api", "blockzoo.trainer")
KERNEL_PACKAGES = ("blockzoo.ops.triton", "blockzoo.ops.sparse")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_package(path: Path) -> bool:
    return path.name == "__init__.py"


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def imported_modules(name: str) -> set[str]:
    """The ``blockzoo`` modules ``name`` imports (``from pkg import sub`` counts as importing ``pkg.sub``)."""
    path = MODULES[name]
    package = name if is_package(path) else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in MODULES else base)
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: imported_modules(name) for name in MODULES}


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def cycle_edges() -> dict[str, set[str]]:
    """The graph less a module's imports of its own packages: a package's ``__init__`` importing its submodules
    (which then see it half-initialised) is the one loop allowed."""
    return {name: {m for m in deps if not within(name, m)} for name, deps in GRAPH.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (its modules, first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1 = on the DFS stack, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def imports_of(package: str, forbidden: tuple[str, ...]) -> list[str]:
    """'module -> imported' for every module under ``package`` importing one under a ``forbidden`` prefix."""
    return [f"{name} -> {dep}" for name in sorted(MODULES) if within(name, package)
            for dep in sorted(GRAPH[name]) if any(within(dep, f) for f in forbidden)]


def test_the_graph_is_read():
    assert "blockzoo.ops.sparse.fallback" in GRAPH["blockzoo.ops.sparse.ops"]
    assert "blockzoo.ops.triton.linear_act" in GRAPH["blockzoo.ops.activation"]  # a function-local import
    assert "blockzoo.registry" in GRAPH["blockzoo.blocks.block"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_cycle():
    cycle = find_cycle(cycle_edges())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_ops_know_nothing_of_configs_or_registry():
    assert not imports_of("blockzoo.ops", OPS_MUST_NOT_IMPORT)


def test_blocks_call_blockzoo_ops_not_kernel_files():
    assert not imports_of("blockzoo.blocks", KERNEL_PACKAGES)
