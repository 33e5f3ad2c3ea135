"""The package's import rules (docs/ARCHITECTURE.md, "Who may import whom"), read from the source with ast.

Every import counts, also one inside a function: a lazy import is still a dependency.
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent / "dissectjax"
MODEL_CLASSES = {
    "dissectjax.models",
    "dissectjax.models.scenenet",
    "dissectjax.models.lenet",
    "dissectjax.models.plain",
    "dissectjax.models.resnet",
    "dissectjax.models.nnx_convnet",
}


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, pathlib.Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def imports(path: pathlib.Path, known: set[str]) -> set[str]:
    """The dissectjax modules ``path`` imports (``from a.b import c`` is a.b.c where that is a module)."""
    found = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        found |= {n for n in names if n.split(".")[0] == "dissectjax"}
    return found


GRAPH = {name: imports(path, set(modules())) for name, path in modules().items()}


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_the_graph_is_read():
    assert "dissectjax.dissect" in GRAPH["dissectjax"] or any(
        within(m, "dissectjax.dissect") for m in GRAPH["dissectjax"]
    )
    assert len(GRAPH) > 40


def test_no_import_cycles():
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(GRAPH.get(node, ())):
            if nxt not in GRAPH:
                continue
            if state.get(nxt) == 1:
                pytest.fail("import cycle: " + " -> ".join([*stack[stack.index(nxt) :], nxt]))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name)


@pytest.mark.parametrize(
    "importer, forbidden, why",
    [
        (
            lambda m: not within(m, "dissectjax.cli") and m != "dissectjax.__main__",
            lambda i: within(i, "dissectjax.cli"),
            "the command line is a face: nothing outside cli/ imports it",
        ),
        (
            lambda m: within(m, "dissectjax.edit") or within(m, "dissectjax.stats"),
            lambda i: i in MODEL_CLASSES,
            "edits and statistics read models only through their declared wiring and sown layers",
        ),
        (
            lambda m: within(m, "dissectjax.models"),
            lambda i: any(
                within(i, p)
                for p in (
                    "dissectjax.edit",
                    "dissectjax.analysis",
                    "dissectjax.data",
                    "dissectjax.dissect",
                    "dissectjax.dissect.sources",
                    "dissectjax.train",
                )
            ),
            "models own their layers and wiring; everything else builds on them, never the reverse",
        ),
        (
            lambda m: within(m, "dissectjax.stats"),
            lambda i: not any(within(i, p) for p in ("dissectjax.stats", "dissectjax.errors", "dissectjax.parallel")),
            "statistics are pure kernels over arrays (reduced over devices by parallel)",
        ),
        (
            lambda m: within(m, "dissectjax.app") or within(m, "dissectjax.report"),
            lambda i: within(i, "dissectjax.cli"),
            "the app and the report use the library",
        ),
    ],
)
def test_import_rules(importer, forbidden, why):
    broken = sorted(f"{m} imports {i}" for m, deps in GRAPH.items() if importer(m) for i in deps if forbidden(i))
    assert not broken, f"{why}:\n" + "\n".join(broken)
