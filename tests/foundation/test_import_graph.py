"""The import graph of the project's packages (``spx_common``, ``services``, ``spx_testing`` and the plugin
packages), read from the source with ``ast``: every ``import`` and ``from ... import``, at module level or inside
a function (a function-local import is still a dependency; it only hides a cycle until the call).

* no cycle among project modules;
* no ``spx_common -> services`` edge (the shared library never depends on a process);
* no service importing another service's modules, except the edges listed in ``EXCEPTIONS``, each with its
  reason. The list can only shrink: an edge that is no longer there must be removed from it (the test says
  which), and a new one fails until it is justified here or, better, what both need moves down to
  ``spx_common``.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# (importer module, imported module) -> why it is allowed for now
_CLI = "services.cli is the operator's command line, not a process: its commands compose the services' configs and cores"
_BACKTEST = ("services.backtest is the offline replay of the live decision path, not a process: it runs the "
             "aggregator's bar core, the detector's engine and plugin host, the selector and the broker's engine on "
             "stored data in one process, the same code as live by design")
_BACKFILL = ("spx backfill's engine (services.cli.backfill, not a process) reads vendor REST bars with the feed's "
             "client and makes bars from flat files with the aggregator's core; they are not yet in spx_common")
_INTERVAL = "parse_interval is the aggregator's interval grammar; the detector parses the same configured intervals"

EXCEPTIONS: dict[tuple[str, str], str] = {
    **{edge: _BACKTEST for edge in [
        ("services.backtest.engine", "services.aggregator.bars"),
        ("services.backtest.engine", "services.detector.config"),
        ("services.backtest.engine", "services.detector.core"),
        ("services.backtest.engine", "services.detector.host"),
        ("services.backtest.run", "services.aggregator.bars"),
        ("services.backtest.run", "services.broker.config"),
        ("services.backtest.run", "services.detector.config"),
        ("services.backtest.run", "services.detector.host"),
        ("services.backtest.sweep", "services.detector.config"),
        ("services.backtest.trading", "services.broker.accounts"),
        ("services.backtest.trading", "services.broker.config"),
        ("services.backtest.trading", "services.broker.engine"),
        ("services.backtest.trading", "services.broker.ledger"),
        ("services.backtest.trading", "services.broker.paper"),
        ("services.backtest.trading", "services.broker.portfolio"),
        ("services.backtest.trading", "services.broker.router"),
        ("services.backtest.trading", "services.selector.config"),
        ("services.backtest.trading", "services.selector.core"),
    ]},
    **{edge: _CLI for edge in [
        ("services.cli.commands.backfill", "services.feed.config"),
        ("services.cli.commands.backfill", "services.feed.rest"),
        ("services.cli.commands.backtest", "services.backtest.parity"),
        ("services.cli.commands.backtest", "services.backtest.run"),
        ("services.cli.commands.backtest", "services.backtest.stats"),
        ("services.cli.commands.backtest", "services.backtest.sweep"),
        ("services.cli.commands.backtest", "services.backtest.trading"),
        ("services.cli.commands.backtest", "services.broker.config"),
        ("services.cli.commands.backtest", "services.detector.config"),
        ("services.cli.commands.backtest", "services.selector.config"),
        ("services.cli.commands.bars", "services.aggregator.bars"),
        ("services.cli.commands.broker", "services.broker.accounts"),
        ("services.cli.commands.broker", "services.broker.config"),
        ("services.cli.commands.broker", "services.broker.credentials"),
        ("services.cli.commands.broker", "services.broker.direct"),
        ("services.cli.commands.broker", "services.broker.tradier"),
        ("services.cli.commands.plugins", "services.detector.config"),
        ("services.cli.commands.plugins", "services.detector.host"),
        ("services.cli.commands.replay", "services.feed.config"),
        ("services.cli.commands.replay", "services.feed.replay"),
        ("services.cli.commands.replay", "services.feed.service"),
        ("services.cli.commands.replay", "services.feed.synthetic"),
        ("services.cli.commands.token", "services.gateway.auth"),
        ("services.cli.commands.token", "services.gateway.config"),
        ("services.cli.commands.users", "services.broker.config"),
        ("services.cli.commands.users", "services.broker.credentials"),
        ("services.cli.common", "services.gateway.config"),
    ]},
    ("services.cli.backfill", "services.aggregator.bars"): _BACKFILL,
    ("services.cli.backfill", "services.feed.rest"): _BACKFILL,
    ("services.detector.service", "services.aggregator.pybars"): _INTERVAL,
}


def _package_roots() -> list[Path]:
    roots = [ROOT / "spx_common", ROOT / "services", ROOT / "spx_testing"]
    roots += [p for d in sorted((ROOT / "plugins").iterdir()) if d.is_dir()
              for p in sorted(d.iterdir()) if (p / "__init__.py").is_file()]
    return [r for r in roots if r.is_dir()]


def project_modules() -> dict[str, Path]:
    out = {}
    for root in _package_roots():
        for f in sorted(root.rglob("*.py")):
            parts = f.relative_to(root.parent).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the project modules it imports (``from pkg import name`` is an edge to ``pkg.name`` when that
    is a module, else to ``pkg``; a name outside the project is no edge)."""

    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for mod, path in modules.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        out = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                out.update(filter(None, (known(a.name) for a in node.names)))
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the package, one level up per extra dot
                    up = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                    base = ".".join(up + ([base] if base else []))
                for a in node.names:
                    full = f"{base}.{a.name}"
                    target = full if full in modules else known(base)
                    if target:
                        out.add(target)
        out.discard(mod)
        graph[mod] = out
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def cross_service_edges(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    return {(a, b) for a, targets in graph.items() for b in targets
            if a.startswith("services.") and b.startswith("services.") and a.split(".")[1] != b.split(".")[1]}


GRAPH = import_graph(project_modules())


def test_the_graph_is_read_from_every_package():
    assert {"spx_common.codec", "services.aggregator.bars", "spx_builtin_detectors"} <= GRAPH.keys()
    assert "services.aggregator.pybars" in GRAPH["services.aggregator.bars"]
    assert "spx_common.models" in GRAPH["spx_common.codec"]


def test_no_import_cycle_among_project_modules():
    assert cycles(GRAPH) == []


def test_the_cycle_finder_finds_cycles_hidden_in_functions(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg import b\n")
    (pkg / "b.py").write_text("def f():\n    from . import c\n")
    (pkg / "c.py").write_text("import pkg.a as a\n")
    (pkg / "d.py").write_text("from pkg.a import name_not_a_module\nimport os\n")
    mods = {f"pkg.{p.stem}" if p.stem != "__init__" else "pkg": p for p in pkg.glob("*.py")}
    graph = import_graph(mods)
    assert graph["pkg.d"] == {"pkg.a"} and graph["pkg.b"] == {"pkg.c"}
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.c"]]


def test_spx_common_never_imports_services():
    assert sorted((a, b) for a, targets in GRAPH.items() if a.startswith("spx_common")
                  for b in targets if b.startswith("services")) == []


def test_no_service_imports_another_services_modules_beyond_the_listed_exceptions():
    edges = cross_service_edges(GRAPH)
    new = sorted(edges - EXCEPTIONS.keys())
    gone = sorted(EXCEPTIONS.keys() - edges)
    assert not new, f"services importing another service's modules (move what both need to spx_common): {new}"
    assert not gone, f"these edges are gone: remove them from EXCEPTIONS (the list only shrinks): {gone}"
