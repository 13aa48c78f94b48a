"""The architecture, enforced: each layer imports only the layers below it."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Where each module lives: the longest matching prefix names its layer.
LAYER_OF_PREFIX = {
    "tinygrad_bn.core": "core",      # Node, backward, the textbook primitives
    "tinygrad_bn.norm": "norm",      # staged and fused normalization
    "tinygrad_bn.fast": "fast",      # registers faster variants on the two layers below
    "tinygrad_bn.check": "check",    # gradcheck, compare, explain
    "tinygrad_bn.train": "train",    # modules, loss, optimizers, the experiment
    "tinygrad_bn.cs231n": "cs231n",  # the assignment's functional API
    "viz": "viz",                    # drawing
    "tinygrad_bn.cli": "top",        # the command line
    "tinygrad_bn.__main__": "top",
    "tinygrad_bn": "top",            # the package's own __init__: the public API
}
# Lowest first. Equal numbers are peers: they may not import each other.
RANK = {"core": 0, "norm": 1, "fast": 2, "check": 3, "train": 3, "cs231n": 4, "viz": 5, "top": 6}


def layer_of(module: str) -> str:
    """The layer of `module`: that of the longest prefix of it listed in LAYER_OF_PREFIX."""
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in LAYER_OF_PREFIX:
            return LAYER_OF_PREFIX[candidate]
    raise AssertionError(f"{module} belongs to no layer: add it to LAYER_OF_PREFIX")


def module_name(path: pathlib.Path, root: pathlib.Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: pathlib.Path, root: pathlib.Path = ROOT) -> list[str]:
    """Every module `path` imports (at the top or inside functions), resolved to full names."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            # `from . import fast` imports the module tinygrad_bn.fast, not a name in it.
            found += [f"{stem}.{alias.name}" for alias in node.names] if not node.module \
                else [stem]
    return [m for m in found if m.split(".")[0] in ("tinygrad_bn", "viz")]


def sources():
    return sorted([*(ROOT / "tinygrad_bn").rglob("*.py"), *(ROOT / "viz").rglob("*.py")])


def violations(paths: list[pathlib.Path], root: pathlib.Path = ROOT) -> list[str]:
    """Each import of a layer at or above the importing module's own (peers included)."""
    problems = []
    for path in paths:
        own = layer_of(module_name(path, root))
        for imported in imported_modules(path, root):
            other = layer_of(imported)
            if other != own and RANK[other] >= RANK[own]:
                problems.append(f"{module_name(path, root)} ({own}) imports {imported} ({other})")
    return problems


def test_every_module_belongs_to_a_layer():
    for path in sources():
        layer_of(module_name(path))


def test_layers_import_only_downwards():
    problems = violations(sources())
    assert not problems, "\n".join(problems)


def test_the_core_never_names_the_fast_layer():
    for path in (ROOT / "tinygrad_bn" / "core").rglob("*.py"):
        assert not [m for m in imported_modules(path) if m.startswith("tinygrad_bn.fast")], path


def test_the_check_catches_upward_and_sideways_imports(tmp_path):
    cases = {"core/bad.py": "from ..norm import spec\n",
             "norm/bad.py": "def f():\n    from ..fast import kernels\n",
             "check/bad.py": "from ..train.nn import Module\n",
             "train/bad.py": "import viz\n"}
    for relative, text in cases.items():
        path = tmp_path / "tinygrad_bn" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        assert len(violations([path], tmp_path)) == 1, relative
