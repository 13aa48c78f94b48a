"""The architecture, enforced: each layer imports only the layers below it."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Where each module lives: the longest matching prefix names its layer.
LAYER_OF_PREFIX = {
    "tinygrad_bn.core": "core",      # Node, backward, the textbook primitives
    "tinygrad_bn.norm": "norm",      # staged and fused normalization
    "tinygrad_bn.layers": "layers",  # the assignment's other layers staged
    "tinygrad_bn.fast": "fast",      # registers faster variants on the two layers below
    "tinygrad_bn.files": "files",    # output files written whole or not at all
    "tinygrad_bn.check": "check",    # gradcheck, compare, explain
    "tinygrad_bn.train": "train",    # modules, loss, optimizers, the experiment
    "tinygrad_bn.cs231n": "cs231n",  # the assignment's functional API
    "tinygrad_bn.grading": "grading",  # judging a student's own code, in a box
    "viz": "viz",                    # drawing
    "tinygrad_bn.cli": "top",        # the command line
    "tinygrad_bn.__main__": "top",
    "tinygrad_bn": "top",            # the package's own __init__: the public API
}
# Lowest first. Equal numbers are peers: they may not import each other.
RANK = {"core": 0, "norm": 1, "layers": 1, "fast": 2, "files": 3, "check": 4, "train": 4,
        "cs231n": 5, "grading": 5, "viz": 6, "top": 7}


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


# --- inside the core: one import pair at most ------------------------------------------
def core_import_graph(folder: pathlib.Path) -> dict[str, set[str]]:
    """Which files of the core folder each of its files imports, by file stem: relative and
    `tinygrad_bn.core...` imports, at the top, inside functions or for type checking alike."""
    files = {path.stem for path in folder.glob("*.py")} - {"__init__"}
    graph = {}
    for path in folder.glob("*.py"):
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                parts = ["tinygrad_bn", "core"][: 3 - node.level] if node.level else []
                stem = ".".join(parts + ([node.module] if node.module else []))
                # `from . import ops` and `from tinygrad_bn.core import ops` import modules.
                modules = [stem] + [f"{stem}.{alias.name}" for alias in node.names]
            else:
                continue
            found |= {m.split(".")[2] for m in modules if m.startswith("tinygrad_bn.core.")}
        graph[path.stem] = found & files - {path.stem}
    return graph


def import_circles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The files that import each other, directly or around a loop: every strongly connected
    set of more than one file."""
    def reachable(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for following in graph.get(todo.pop(), ()):
                if following not in seen:
                    seen.add(following)
                    todo.append(following)
        return seen

    reach = {name: reachable(name) for name in graph}
    circles: list[set[str]] = []
    for name in sorted(graph):
        circle = {name} | {other for other in reach[name] if name in reach[other]}
        if len(circle) > 1 and circle not in circles:
            circles.append(circle)
    return circles


def core_circle_problems(folder: pathlib.Path) -> list[str]:
    """Every loop of three or more files, and every pair beyond the first (DESIGN: at most the
    one pair of Node and what builds Nodes)."""
    circles = import_circles(core_import_graph(folder))
    problems = [f"a loop of {len(c)} files: {', '.join(sorted(c))}" for c in circles if len(c) > 2]
    pairs = [" <-> ".join(sorted(c)) for c in circles if len(c) == 2]
    if len(pairs) > 1:
        problems.append(f"{len(pairs)} import pairs (at most one): {'; '.join(pairs)}")
    return problems


def test_the_core_has_at_most_one_import_pair_and_no_loop():
    problems = core_circle_problems(ROOT / "tinygrad_bn" / "core")
    assert not problems, "\n".join(problems)


def test_the_circle_check_sees_every_kind_of_import(tmp_path):
    def core(files: dict[str, str]) -> list[str]:
        folder = tmp_path / str(len(list(tmp_path.iterdir())))
        folder.mkdir()
        for name, text in {"__init__": "from .a import x\n", **files}.items():
            (folder / f"{name}.py").write_text(text)
        return core_circle_problems(folder)

    one_pair = {"a": "from .b import y\n", "b": "def f():\n    from . import a\n", "c": "from .a import x\n"}
    assert core(one_pair) == []
    loops = {  # three files in a loop, each drawn with another kind of import
        "inside a function": {"b": "def f():\n    from .c import z\n"},
        "from . import": {"b": "from . import c\n"},
        "absolute": {"b": "from tinygrad_bn.core.c import z\n"},
        "absolute package": {"b": "from tinygrad_bn.core import c\n"},
        "plain import": {"b": "import tinygrad_bn.core.c\n"},
        "for type checking": {"b": "if TYPE_CHECKING:\n    from .c import z\n"},
        "from the package above": {"b": "from ..core.c import z\n"},
    }
    for kind, files in loops.items():
        problems = core({"a": "from .b import y\n", "c": "from .a import x\n", **files})
        assert problems == ["a loop of 3 files: a, b, c"], kind
    two_pairs = {"a": "from .b import y\n", "b": "from .a import x\n",
                 "c": "from .d import w\n", "d": "from .c import z\n"}
    assert core(two_pairs) == ["2 import pairs (at most one): a <-> b; c <-> d"]


# --- the seams: where the fast layer may stand in ------------------------------------
def test_fast_variants_stand_in_only_at_seams_the_core_declares():
    import tinygrad_bn as tb
    from tinygrad_bn.core.seams import SEAMS
    from tinygrad_bn.fast.registry import fast_variant

    assert {f"{s.textbook.__module__}.{s.name}" for s in SEAMS.values()} == set(SEAMS)
    for variant in tb.fast.VARIANTS:  # each on a declared seam, which lists it
        seam = next(s for s in SEAMS.values() if variant.textbook is s.textbook)
        assert (variant.when, variant.fast) in seam.stand_ins
        assert seam.where.startswith("Seam:")
    with pytest.raises(TypeError, match=r"Add\.backward: not a seam the core declares"):
        fast_variant(tb.ops.Add, "backward", when=lambda *args: True)
    with pytest.raises(TypeError, match=r"_totals: not a seam the core declares"):
        fast_variant(tb.core.node, "_totals", when=lambda *args: True)


def test_a_seam_says_where_its_stand_ins_live():
    from tinygrad_bn.core.seams import seam

    def undocumented(x):
        return x

    with pytest.raises(ValueError, match="in a line starting with 'Seam:'"):
        seam(undocumented)


def test_a_stand_in_runs_only_where_its_condition_holds():
    import numpy as np

    from tinygrad_bn.core.seams import seam, textbook_only

    def textbook(x):
        """Seam: this test's stand-in."""
        return "textbook"

    from tinygrad_bn.core.seams import SEAMS

    dispatch = seam(textbook)
    try:
        dispatch.seam.add(lambda x: "fast", when=lambda x: x.size > 2)
        assert dispatch(np.zeros(3)) == "fast"
        assert dispatch(np.zeros(2)) == "textbook"
        assert dispatch(np.float64(5.0)) == "textbook"  # arrays only: a numpy scalar never
        with textbook_only():
            assert dispatch(np.zeros(3)) == "textbook"
    finally:  # the table of declared seams is the package's own: leave it as it was
        del SEAMS[f"{textbook.__module__}.{textbook.__qualname__}"]


def _private_core_names() -> set[str]:
    import inspect

    import tinygrad_bn.core as core

    names = set()
    for path in (ROOT / "tinygrad_bn" / "core").glob("*.py"):
        module = __import__(f"tinygrad_bn.core.{path.stem}", fromlist=["_"]) \
            if path.stem != "__init__" else core
        for name, value in vars(module).items():
            if inspect.isclass(value) and value.__module__ == module.__name__:
                names |= {n for n in vars(value) if n.startswith("_") and not n.startswith("__")}
                names |= {n for n in getattr(value, "__slots__", ()) if n.startswith("_")
                          and not n.startswith("__")}
            if name.startswith("_") and not name.startswith("__"):
                names.add(name)
    return names


def test_the_fast_layer_uses_no_private_core_name():
    private = _private_core_names()
    assert {"_op", "_params", "_seq", "_collect", "_totals", "_FREED"} <= private
    problems = []
    for path in sorted((ROOT / "tinygrad_bn" / "fast").glob("*.py")):
        tree = ast.parse(path.read_text())
        own = {n.name for n in ast.walk(tree)
               if isinstance(n, (ast.FunctionDef, ast.ClassDef))} | \
              {t.id for n in ast.walk(tree) if isinstance(n, ast.Assign)
               for t in n.targets if isinstance(t, ast.Name)}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and "core" in node.module:
                problems += [f"{path.name} imports {a.name}" for a in node.names
                             if a.name.startswith("_")]
            elif isinstance(node, ast.Attribute) and node.attr in private - own:
                problems.append(f"{path.name}:{node.lineno} uses .{node.attr}")
    assert not problems, "\n".join(problems)


def test_the_backward_loop_is_the_cores_and_calls_the_declared_step():
    import inspect

    from tinygrad_bn.core import node

    source = inspect.getsource(node._totals)
    assert "step = vjp" in source and "step(node, total, create_graph)" in source
    assert node._totals.__module__ == "tinygrad_bn.core.node"
    assert not hasattr(node._totals, "seam")  # the loop itself is not replaceable


# --- importing the library changes nothing in the host process ------------------------
PROBE = """
import ctypes, ctypes.util, threading

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks",
                "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]

def mapped_on_its_own(size=64 << 20):
    # glibc serves a block above its mmap threshold (at most 32 MiB by default) with pages
    # of its own: hblkhd counts them. mallopt's M_MMAP_THRESHOLD is what changes that.
    before = libc.mallinfo2().hblkhd
    block = libc.malloc(size)
    grew = libc.mallinfo2().hblkhd - before
    libc.free(block)
    return grew >= size

import tinygrad_bn as tb
print(mapped_on_its_own(), threading.active_count())
tb.fast.configure()
print(mapped_on_its_own())
"""


def test_importing_the_library_leaves_malloc_and_threads_alone():
    import platform
    import subprocess
    import sys

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("the probe reads glibc's mallinfo2")
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                            timeout=120, env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    after_import, after_configure = result.stdout.split("\n")[:2]
    assert after_import == "True 1"  # malloc untouched, no thread started
    assert after_configure == "False"  # the one explicit call: large blocks stay in the heap


# --- the order of the layers, said the same way everywhere ---------------------------
def _ranked(groups: list[list[str]]) -> None:
    ranks = [{RANK[name] for name in group} for group in groups]
    assert all(len(r) == 1 for r in ranks), groups  # a group holds peers
    flat = [r.pop() for r in ranks]
    assert flat == sorted(set(RANK.values())), groups  # every layer once, lowest first


def test_the_package_docstring_lists_the_layers_in_order():
    import re

    import tinygrad_bn

    text = " ".join(tinygrad_bn.__doc__.split())
    chain = text[text.index("Layers"):].split(":", 1)[1].split(".")[0]
    groups = [[re.match(r"\s*(\w+)", name).group(1) for name in part.split(",")]
              for part in re.sub(r"\([^)]*\)", "", chain).split("<")]
    _ranked(groups)


def test_the_architecture_page_draws_the_layers_in_order():
    text = (ROOT / "docs" / "architecture.md").read_text()
    block = text[text.index("## Layers"):].split("```")[1]
    groups = []
    for line in block.strip().splitlines()[::-1]:  # drawn top first
        if line.startswith(" "):
            continue  # a continuation of the line above
        groups.append([word for word in line.replace("|", " ").split()
                       if word in RANK and not word.startswith("tinygrad_bn")])
    _ranked([group for group in groups if group])
