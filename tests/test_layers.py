"""The package's architecture, read from its own imports with `ast` (every import: module
level, under TYPE_CHECKING and inside functions), so that the rules hold in CI and not only
today: imports run down the layers of docs/design.md, never up; no import circles; code that
computes never touches MLflow; each third-party library is imported only by its owner."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "husai"

# Bottom to top. A module may import its own layer (acyclically) and any layer below it.
LAYERS: tuple[tuple[str, ...], ...] = (
    # husai.harness: runners started in a harness's own Python; they import no husai module.
    ("husai", "husai.names", "husai.core", "husai.harness"),
    ("husai.config",),
    ("husai.model", "husai.base_model"),  # the second: old pyfunc versions import it
    ("husai.sae",),
    ("husai.measure",),
    ("husai.registry",),
    ("husai.report",),
    ("husai.console",),
    ("husai.run",),
    ("husai.cli", "husai.cli_args", "husai.__main__"),
)
COMPUTE = ("husai.model", "husai.sae", "husai.measure")
RECORDING = ("husai.registry",)
# Third-party library -> the only modules (or packages) that may import it.
OWNERS = {
    "mlflow": (
        "husai.registry.tracking",
        "husai.registry.tracking_registry",  # Tracker's registry half (its base class)
        "husai.registry.pyfunc_base",
        "husai.registry.pyfunc_sae",
    ),
    "transformer_lens": (
        "husai.model.base_model",
        "husai.model.activations",
        "husai.model.lm_source",
        "husai.model.lm_model",
    ),
    # lm_source: sae-lens's packing of documents into contexts, nothing else.
    # harness: the official harnesses load the exported SAE folder with sae-lens themselves.
    "sae_lens": ("husai.sae.build", "husai.model.lm_source", "husai.harness"),
    "ray": (
        "husai.run.sweep.driver",
        "husai.run.sweep.search",
        "husai.run.sweep.ray_runtime",
        "husai.run.sweep.progress",
        "husai.run.sweep.trial",
    ),
    "optuna": ("husai.run.sweep.search",),
    "matplotlib": ("husai.report",),
}
# Imports inside functions hide arrows; allowed only where import time was measured to matter.
LAZY_OK = ("husai.cli",)


@dataclass(frozen=True)
class Import:
    importer: str  # dotted module name
    target: str  # dotted module (husai.*) or the top-level name of a third-party library
    line: int
    in_function: bool


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def read_imports(root: Path) -> tuple[set[str], list[Import]]:
    """Every module under `root` (a package folder) and every import in it."""
    files = sorted(root.rglob("*.py"))
    modules = {module_name(root, f) for f in files}
    found: list[Import] = []
    for f in files:
        me = module_name(root, f)
        tree = ast.parse(f.read_text(), str(f))
        functions = [
            n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
        ]
        inside = {id(n) for fn in functions for n in ast.walk(fn) if n is not fn}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                # `from husai.x import y`: y is a module when such a file exists.
                targets = [
                    f"{node.module}.{a.name}"
                    if f"{node.module}.{a.name}" in modules
                    else node.module
                    for a in node.names
                ]
            else:
                continue
            for t in targets:
                target = t if t.startswith("husai") else t.split(".")[0]
                found.append(Import(me, target, node.lineno, id(node) in inside))
    return modules, found


def layer(module: str) -> int:
    best, rank = -1, -1
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                best, rank = len(p), i
    if rank < 0:
        raise AssertionError(f"{module}: in no layer of LAYERS (add it to docs/design.md too)")
    return rank


def within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def upward(imports: list[Import]) -> list[str]:
    return [
        f"{i.importer}:{i.line} imports {i.target} (layer {layer(i.target)} > {layer(i.importer)})"
        for i in imports
        if i.target.startswith("husai") and layer(i.target) > layer(i.importer)
    ]


def circles(modules: set[str], imports: list[Import]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for i in imports:
        if i.target in modules and i.target != i.importer:
            graph[i.importer].add(i.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for m in sorted(modules):
        if m not in index:
            visit(m)
    return out


def compute_touching_records(imports: list[Import]) -> list[str]:
    return [
        f"{i.importer}:{i.line} imports {i.target}"
        for i in imports
        if within(i.importer, COMPUTE) and (within(i.target, RECORDING) or i.target == "mlflow")
    ]


def foreign_libraries(imports: list[Import]) -> list[str]:
    return [
        f"{i.importer}:{i.line} imports {i.target} (owned by {', '.join(OWNERS[i.target])})"
        for i in imports
        if i.target in OWNERS and not within(i.importer, OWNERS[i.target])
    ]


def lazy(imports: list[Import]) -> list[str]:
    return [
        f"{i.importer}:{i.line} imports {i.target} inside a function"
        for i in imports
        if i.in_function and not within(i.importer, LAZY_OK)
    ]


MODULES, IMPORTS = read_imports(PACKAGE)


def test_imports_run_down_the_layers() -> None:
    assert upward(IMPORTS) == []


def test_no_import_circles() -> None:
    assert circles(MODULES, IMPORTS) == []


def test_compute_never_touches_mlflow_or_the_records() -> None:
    assert compute_touching_records(IMPORTS) == []


def test_each_library_is_imported_by_its_owner_only() -> None:
    assert foreign_libraries(IMPORTS) == []


def test_imports_sit_at_module_top() -> None:
    assert lazy(IMPORTS) == []


def test_harness_runners_import_nothing_of_husai() -> None:
    """They run in a harness's own environment, where HUSAI need not be installed."""
    assert [
        i
        for i in IMPORTS
        if within(i.importer, ("husai.harness",)) and i.target.startswith("husai")
    ] == []


def test_modules_stay_short() -> None:
    long = {
        module_name(PACKAGE, f): n
        for f in PACKAGE.rglob("*.py")
        if (n := len(f.read_text().splitlines())) > 400
    }
    assert long == {}


def test_every_module_has_a_docstring_and_a_layer() -> None:
    for f in PACKAGE.rglob("*.py"):
        assert ast.get_docstring(ast.parse(f.read_text())), f
        layer(module_name(PACKAGE, f))


# --- the checks can fail -----------------------------------------------------------------------
def fake_package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "husai"
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_the_checks_catch_what_they_forbid(tmp_path: Path) -> None:
    root = fake_package(
        tmp_path,
        {
            "__init__.py": '"""x"""\n',
            "model/__init__.py": '"""x"""\n',
            # compute reaching up into the records, lazily, plus MLflow itself
            "model/base_model.py": (
                '"""x"""\nimport mlflow\n\ndef f():\n    from husai.registry import records\n'
            ),
            "registry/__init__.py": '"""x"""\n',
            "registry/records.py": '"""x"""\nfrom husai.model import base_model\n',
            "sae/__init__.py": '"""x"""\n',
            "sae/train.py": '"""x"""\nfrom husai.sae import batched\n',
            "sae/batched.py": '"""x"""\nfrom husai.sae.train import step\n',
        },
    )
    modules, imports = read_imports(root)
    assert upward(imports) == [
        "husai.model.base_model:5 imports husai.registry.records (layer 5 > 2)"
    ]
    assert sorted(map(tuple, circles(modules, imports))) == [
        ("husai.model.base_model", "husai.registry.records"),
        ("husai.sae.batched", "husai.sae.train"),
    ]
    assert len(compute_touching_records(imports)) == 2
    assert foreign_libraries(imports) == [
        "husai.model.base_model:2 imports mlflow (owned by "
        "husai.registry.tracking, husai.registry.tracking_registry, husai.registry.pyfunc_base, "
        "husai.registry.pyfunc_sae)"
    ]
    assert lazy(imports) == [
        "husai.model.base_model:5 imports husai.registry.records inside a function"
    ]


def test_nothing_points_outside_the_repository() -> None:
    """Docs and docstrings send a newcomer to files a clone has (docs/design.md, docs/metrics.md),
    never to design notes that live outside the repository."""
    root = PACKAGE.parent
    outside = re.compile("shared/(DESIGN|STACK)|(DESIGN|STACK)" + r"\.md")
    files = [root / n for n in ("README.md", "CHANGELOG.md", "pyproject.toml", "MLproject")]
    for folder in ("husai", "docs", "gates", "sweeps", "benchmarks"):
        files += [f for f in (root / folder).rglob("*") if f.suffix in {".py", ".md", ".yaml"}]
    found = [
        f"{f.relative_to(root)}:{i}"
        for f in files
        for i, line in enumerate(f.read_text().splitlines(), 1)
        if outside.search(line)
    ]
    assert found == []


def test_benchmarks_import_what_the_package_has() -> None:
    """Benchmarks import HUSAI inside their workers (to time a fresh process), where a moved
    module would only fail when someone runs them by hand: every name they take must exist."""
    missing = []
    for f in sorted((PACKAGE.parent / "benchmarks").glob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("husai"):
                module = importlib.import_module(str(node.module))
                missing += [
                    f"{f.name}:{node.lineno} {node.module}.{a.name}"
                    for a in node.names
                    if not hasattr(module, a.name)
                    and importlib.util.find_spec(f"{node.module}.{a.name}") is None
                ]
    assert missing == []


@pytest.mark.parametrize("doc", ["design.md", "metrics.md"])
def test_every_cited_section_of_the_docs_exists(doc: str) -> None:
    """Docstrings cite docs/design.md and docs/metrics.md by section (`docs/design.md,
    "Release gate"`; `docs/metrics.md, "Stress tests" and "Local evals"`): each cited name
    begins a heading there."""
    root = PACKAGE.parent
    headings = [
        line.lstrip("#").strip()
        for line in (root / "docs" / doc).read_text().splitlines()
        if line.startswith("#")
    ]
    cited = re.compile(rf'docs/{re.escape(doc)},\s+((?:"[^"]+"(?:,\s*|\s+and\s+)?)+)')
    files = [*PACKAGE.rglob("*.py"), *(root / "gates").glob("*.yaml"), root / "gates" / "README.md"]
    missing = [
        f"{f.relative_to(root)}: {name}"
        for f in files
        for group in cited.findall(" ".join(f.read_text().split()))
        for name in re.findall(r'"([^"]+)"', group)
        if not any(h.startswith(name) for h in headings)
    ]
    assert missing == []


def test_every_gateable_metric_is_a_whole_key() -> None:
    """The group prefixes in names.py (stress/, external/, consistency/) are not metrics."""
    from husai import names

    assert all(not k.endswith("/") and "/" in k for k in names.gateable_metrics())
    assert names.ARTIFACT_LEVEL_KEYS.issubset(names.gateable_metrics())


def test_every_package_docstring_names_all_its_modules() -> None:
    """A package's docstring is its index: it names (in backticks) every module and subpackage
    in it, so a reader finds each one from the package it sits in."""
    unnamed = []
    for init in sorted(PACKAGE.rglob("__init__.py")):
        folder = init.parent
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        parts = [p.stem for p in folder.glob("*.py") if p.stem not in ("__init__", "__main__")]
        parts += [d.name for d in folder.iterdir() if (d / "__init__.py").exists()]
        for name in sorted(parts):
            if f"`{name}`" not in doc and f"`{name}/`" not in doc:
                unnamed.append(f"{folder.relative_to(PACKAGE.parent)}: {name}")
    assert unnamed == []
