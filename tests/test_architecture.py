"""The floor plan (docs/ARCHITECTURE.md) as tests: kuosan's modules import each other without cycles, and the
command line shows every option the README uses."""

import ast
import re
import shlex
from pathlib import Path

import pytest

from kuosan.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "kuosan"


def _modules() -> dict[str, Path]:
    mods = {}
    for f in PACKAGE.rglob("*.py"):
        parts = list(f.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = f
    return mods


def import_graph() -> dict[str, set[str]]:
    """Module -> the kuosan modules it imports, at module level or inside functions alike. ``from kuosan.a
    import b`` counts as importing ``kuosan.a.b`` when that is a module, else ``kuosan.a``."""
    mods = _modules()

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph = {m: set() for m in mods}
    for m, f in mods.items():
        package = m if f.name == "__init__.py" else m.rpartition(".")[0]
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    pkg = package
                    for _ in range(node.level - 1):
                        pkg = pkg.rpartition(".")[0]
                    base = f"{pkg}.{base}" if base else pkg
                targets = [f"{base}.{a.name}" for a in node.names] + [base]
                targets = [t for t in targets if t in mods][:1] or [base]  # the most specific module named
            else:
                continue
            for t in targets:
                r = resolve(t) if t.split(".")[0] == "kuosan" else None
                if r and r != m and not m.startswith(r + ".") and r != "kuosan":
                    graph[m].add(r)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm, iteratively)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
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
    return out


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


# The floors of docs/ARCHITECTURE.md, from the ground up: a module imports its own floor and those below.
FLOORS = [
    ("kuosan.errors", "kuosan.rng", "kuosan.images", "kuosan.runtime", "kuosan.rundir", "kuosan.checkpoint",
     "kuosan.pnginfo"),
    ("kuosan.nets", "kuosan.diffusion", "kuosan.data", "kuosan.evaluation.metrics"),  # metrics: maths of arrays
    ("kuosan.config", "kuosan.validation", "kuosan.records", "kuosan.interop"),
    ("kuosan.model", "kuosan.latent", "kuosan.sampling"),
    ("kuosan.pipeline", "kuosan"),  # the package itself: kuosan.load is the pipeline's front door
    ("kuosan.training", "kuosan.evaluation"),
    ("kuosan.demo", "kuosan.bench", "kuosan.serve", "kuosan.cli", "kuosan.__main__"),
]


def floor_of(module: str) -> int:
    for level, rooms in enumerate(FLOORS):  # a module listed by name outranks its package's floor
        if module in rooms:
            return level
    for level, rooms in enumerate(FLOORS):
        if any(r != "kuosan" and module.startswith(r + ".") for r in rooms):
            return level
    raise AssertionError(f"{module} has no floor in docs/ARCHITECTURE.md (add it to FLOORS there and here)")


def test_imports_go_down_the_floor_plan():
    graph = import_graph()
    up = sorted(f"{m} -> {t}" for m, targets in graph.items() for t in targets if floor_of(t) > floor_of(m))
    assert not up, "imports that go up the floor plan: " + "; ".join(up)


# --- the command line teaches -----------------------------------------------------------------------

def _readme_commands() -> list[list[str]]:
    """Every kuosan command line in the README's shell blocks (``.venv/bin/kuosan ...`` or ``torchrun ... -m
    kuosan ...``), as words, with continuation lines joined."""
    commands, shell, opened, pending = [], False, False, ""
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.startswith("```"):
            opened, shell = (True, line.strip() in ("```bash", "```sh", "```")) if not opened else (False, False)
            continue
        if not shell:
            continue
        line = pending + line.split("  #")[0].strip()
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        m = re.match(r"^(?:\.venv/bin/)?kuosan\s+(.*)$", line) or re.search(r"\s-m kuosan\s+(.*)$", line)
        if m:
            commands.append(shlex.split(m.group(1)))
    return commands


def _help_of(words: list[str]) -> tuple[list[str], str]:
    """The (sub)command named at the start of ``words`` and its ``--help`` text."""
    parser = build_parser()
    path, p = [], parser
    for w in words:
        sub = next((a for a in p._actions if a.__class__.__name__ == "_SubParsersAction"), None)
        if sub is None or w not in sub.choices:
            break
        path.append(w)
        p = sub.choices[w]
    return path, p.format_help()


def test_the_readme_shows_kuosan_commands():
    assert len(_readme_commands()) >= 15


@pytest.mark.parametrize("words", _readme_commands(), ids=lambda w: " ".join(w[:2]))
def test_every_help_names_the_options_the_readme_uses(words):
    path, text = _help_of(words)
    assert path, f"the README runs an unknown command: kuosan {' '.join(words)}"
    used = {w.split("=")[0] for w in words if w.startswith("--")}
    missing = sorted(o for o in used if not re.search(rf"(?<![\w.-]){re.escape(o)}(?![\w-])", text))
    assert not missing, f"`kuosan {' '.join(path)} --help` does not show {missing}"


def test_train_help_lists_every_config_field_with_its_comment():
    import dataclasses

    from kuosan.config import SECTIONS, field_docs

    _, text = _help_of(["train"])
    flat = " ".join(text.split())
    for section, cls in SECTIONS.items():
        docs = field_docs(cls)
        for f in dataclasses.fields(cls):
            assert f"--{section}.{f.name}" in text, f"--{section}.{f.name}"
            assert " ".join(docs[f.name].split())[:30] in flat, f"the comment of {section}.{f.name}"
