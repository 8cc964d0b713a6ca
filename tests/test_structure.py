"""The package's shape, checked: no import cycle (function-local imports included), one module behind the
wall of transformers' internals, no function over 50 lines, every module documented and listed in the
README's layout table."""
import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "flashmem"
WALL = {"backbone.py", "loader.py"}  # the modules allowed to name transformers' internals
INTERNALS = ("self_attn", "embed_tokens", "q_proj", "k_proj", "v_proj", "DynamicCache", "model.config")
MAX_FUNCTION_LINES = 50


def modules() -> dict[str, Path]:
    """flashmem.x.y -> file, for every module of the package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imported(name: str, path: Path, known: dict) -> set[str]:
    """flashmem modules that `name` imports anywhere in its file (top level or inside functions)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "flashmem"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if base.split(".")[0] != "flashmem":
                continue
            submodules = {f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known}
            found |= submodules
            if len(submodules) < len(node.names):  # some names are attributes of base itself
                found.add(base)
    return {m for m in found if m in known and m != name}


def test_no_import_cycle():
    known = modules()
    graph = {name: imported(name, path, known) for name, path in known.items()}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            assert state.get(nxt) != 1, "import cycle: " + " -> ".join(trail[trail.index(nxt):] + [nxt])
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert graph["flashmem.engine"].isdisjoint({"flashmem.memgen", "flashmem.softprompt", "flashmem.consolidator"})


def test_only_the_wall_names_transformers_internals():
    offenders = [f"{path.relative_to(ROOT)}: {word}" for path in PACKAGE.rglob("*.py") if path.name not in WALL
                 for word in INTERNALS if word in path.read_text()]
    assert not offenders, offenders


def test_no_function_over_50_lines():
    long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({length} lines)")
    assert not long, long


def test_every_module_is_documented_and_listed_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    listed = set(re.findall(r"^\| `([^`]+)` \|", readme, flags=re.M))
    for path in list(PACKAGE.rglob("*.py")) + list((ROOT / "benchmarks").glob("*")):
        rel = str(path.relative_to(ROOT))
        if path.suffix == ".py" and path.name != "__init__.py" or path.parent.name == "benchmarks":
            assert rel in listed, f"{rel} is missing from the README's layout table"
        if path.suffix == ".py":
            doc = ast.get_docstring(ast.parse(path.read_text()))
            assert doc and doc.strip(), f"{rel} has no module docstring"
    missing = [name for name in listed if "/" in name and not (ROOT / name).exists() and "*" not in name]
    assert not missing, f"the README lists files that do not exist: {missing}"
