"""Imports go down: each part of vecap_cli imports only the parts below it.

The floors are written once, in MAY_IMPORT; every module's imports are read from
its source (ast), the lazy ones inside functions and `importlib` calls included,
so a `--help` that stays light does not hide an import that goes up.
"""

import ast
from collections.abc import Iterator
from pathlib import Path

import vecap_cli

PACKAGE = Path(vecap_cli.__file__).parent

# Parts that import nothing of vecap_cli, for any part above to use; `vecap_cli` is
# the package root (__version__).
LEAVES = frozenset({"vecap_cli", "errors", "rand"})

# Part (a subpackage or top-level module of vecap_cli) -> the parts it may import
# besides itself, floor by floor as README's "Layout" stacks them. A new part
# needs a row here; an import a row does not allow is one that goes up a floor.
MAY_IMPORT: dict[str, frozenset[str]] = {
    **dict.fromkeys(LEAVES, frozenset()),
    "core": frozenset(),  # the kernels stand alone: no CLI, no streams, nothing of vecap
    "loading": LEAVES,  # model configs, shared by train, eval and the backends
    "positions": LEAVES,  # a text tower's context length (Long-CLIP's stretch): train and eval
    "placement": LEAVES,  # ranks and devices, read from the environment at the edge
    "stream": LEAVES | {"placement"},  # no torch: `vecap mix --help` stays light
    "process_group": LEAVES
    | {"placement"},  # a rank's device and group (torch), train's and eval's
    "generate": LEAVES | {"loading", "stream"},
    # eval, placement, process_group: vecap filter scores and embeds (semantic dedup)
    # with the model loader and encoder vecap eval uses, on this rank's device
    "steps": LEAVES | {"loading", "placement", "process_group", "stream", "generate", "eval"},
    "eval": LEAVES | {"loading", "positions", "placement", "process_group", "stream"},
    "train": LEAVES
    | {"core", "loading", "positions", "placement", "process_group", "stream", "steps", "eval"},
    # runs record commands as tasks of an engine's job; generate: a Ray actor keeps
    # the model its tasks load (generate.load.keep_models)
    "launch": LEAVES | {"stream", "generate"},
    "cli": LEAVES
    | {"core", "loading", "positions", "placement", "stream", "generate", "steps"}
    | {"eval", "train", "launch"},
    "__main__": frozenset({"cli"}),
}

_IMPORTERS = {"import_module", "find_spec"}  # importlib's: the core's own lazy exports


def part_of(path: Path) -> str:
    """`vecap_cli/steps/mix.py` is in `steps`; `vecap_cli/errors.py` is `errors`."""
    relative = path.relative_to(PACKAGE)
    return "vecap_cli" if relative == Path("__init__.py") else relative.parts[0].removesuffix(".py")


def imported_parts(source: str) -> Iterator[tuple[int, str]]:
    """(line, part) for each import of vecap_cli in a module's source, at any depth."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"line {node.lineno}: a relative import; write it absolute"
            names = [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Call) and _name(node.func) in _IMPORTERS and node.args:
            names = [_literal_head(node.args[0])]
        else:
            continue
        for name in names:
            if name.split(".")[0] == "vecap_cli":
                yield node.lineno, _part(name)


def _name(func: ast.expr) -> str:
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


def _literal_head(arg: ast.expr) -> str:
    """The module a call names: a string, or the fixed start of an f-string."""
    if isinstance(arg, ast.JoinedStr) and arg.values:
        arg = arg.values[0]
    return arg.value if isinstance(arg, ast.Constant) and isinstance(arg.value, str) else ""


def _part(name: str) -> str:
    """`vecap_cli.stream.sample` -> stream; `vecap_cli.__version__` -> vecap_cli."""
    parts = name.split(".")
    if len(parts) > 1 and ((PACKAGE / parts[1]).is_dir() or (PACKAGE / f"{parts[1]}.py").is_file()):
        return parts[1]
    return "vecap_cli"


def upward_imports(path: Path) -> list[str]:
    here = part_of(path)
    allowed = MAY_IMPORT.get(here)
    assert allowed is not None, f"{here} has no floor: give it a row in MAY_IMPORT"
    return [
        f"{path.relative_to(PACKAGE.parent)}:{line}: {here} imports {there}"
        for line, there in imported_parts(path.read_text())
        if there != here and there not in allowed
    ]


def test_every_import_stays_on_its_floor_or_goes_down():
    assert set().union(*MAY_IMPORT.values()) <= set(MAY_IMPORT), "a row names an unknown part"
    upward = [line for path in sorted(PACKAGE.rglob("*.py")) for line in upward_imports(path)]
    assert not upward, "imports that go up a floor:\n" + "\n".join(upward)


def test_lazy_and_importlib_imports_are_read_too():
    source = (
        "import importlib\n"
        "def later():\n"
        "    from vecap_cli.cli.options import report\n"
        "    importlib.import_module(f'vecap_cli.train.{name}')\n"
        "from vecap_cli import __version__, errors\n"
    )
    assert sorted(imported_parts(source)) == [
        (3, "cli"), (4, "train"), (5, "errors"), (5, "vecap_cli"),
    ]  # fmt: skip
