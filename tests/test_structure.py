"""The package's shape, checked: sub-packages by role that import only downward, no import cycle
(function-local imports included), one module behind the wall of transformers' internals, no function
over 50 lines, every module documented and listed in the README's layout table."""
import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "flashmem"
WALL = {"models/backbone.py", "models/loader.py"}  # the modules allowed to name transformers' internals
INTERNALS = ("self_attn", "embed_tokens", "q_proj", "k_proj", "v_proj", "DynamicCache", "model.config")
MAX_FUNCTION_LINES = 50
MAX_MODULES_PER_PACKAGE = 12
# Layers, bottom to top: a module imports only from its own layer or one below. The top-level shared
# modules (errors, files, version, config) are layer 0, used by everything; api.py, the Python face,
# sits between training (which it uses for thresholds) and evaluation (which runs through it).
LAYERS = {
    "flashmem.errors": 0, "flashmem.files": 0, "flashmem.version": 0, "flashmem.config": 0,
    "flashmem.models": 1, "flashmem.data": 1,
    "flashmem.memory": 2,
    "flashmem.decoding": 3,
    "flashmem.training": 4,
    "flashmem.api": 5,
    "flashmem.evaluation": 6,
    "flashmem.integrations": 7,
    "flashmem.cli": 8,
    "flashmem": 9, "flashmem.__main__": 9,  # the package face re-exports the public API
}


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
    assert graph["flashmem.decoding.engine"].isdisjoint({"flashmem.memory.memgen", "flashmem.memory.softprompt", "flashmem.memory.consolidator"})


def layer(name: str) -> int:
    """A module's layer: that of its sub-package (flashmem.memory.registry -> flashmem.memory)."""
    parts = name.split(".")
    for depth in range(len(parts), 0, -1):
        key = ".".join(parts[:depth])
        if key in LAYERS:
            return LAYERS[key]
    raise AssertionError(f"{name} belongs to no layer of tests/test_structure.py's LAYERS")


def test_sub_packages_import_only_downward():
    known = modules()
    upward = [f"{name} (layer {layer(name)}) imports {dep} (layer {layer(dep)})"
              for name, path in known.items() for dep in sorted(imported(name, path, known)) if layer(dep) > layer(name)]
    assert not upward, upward


def test_layout_is_one_level_of_small_sub_packages():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert top == ["__init__.py", "__main__.py", "api.py", "config.py", "errors.py", "files.py", "version.py"], top
    for sub in sorted(p for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"):
        assert (sub / "__init__.py").exists(), f"{sub.name}/ is not a package"
        assert not [d for d in sub.iterdir() if d.is_dir() and (d / "__init__.py").exists()], f"{sub.name}/ nests packages"
        count = len([p for p in sub.glob("*.py") if p.name != "__init__.py"])
        assert count <= MAX_MODULES_PER_PACKAGE, f"{sub.name}/ has {count} modules"


def test_no_data_folder_is_guessed():
    """Data comes from an argument, $FLASHMEM_DATA_DIR, a path or the hub: the library never looks for this
    repository's development folder."""
    found = [f"{p.relative_to(ROOT)}" for p in PACKAGE.rglob("*") if p.is_file() and p.suffix in (".py", ".yaml")
             and "shared/data" in p.read_text()]
    assert not found, found


def test_package_face_exports_the_public_api():
    import flashmem
    for name in ("FlashMem", "TrainConfig", "train", "CalibrateConfig", "calibrate", "EvalConfig", "evaluate",
                 "BenchConfig", "bench", "MemoryConfig", "GenerationConfig", "load_backbone", "load_memory"):
        assert name in flashmem.__all__ and getattr(flashmem, name) is not None, name


def test_only_the_wall_names_transformers_internals():
    offenders = [f"{path.relative_to(ROOT)}: {word}" for path in PACKAGE.rglob("*.py") if str(path.relative_to(PACKAGE)) not in WALL
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
