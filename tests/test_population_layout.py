"""The seams of engine.population: the forward-model protocol, the configuration objects, and an import
graph of ``engine`` without cycles."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

import engine.emulator as em
from engine.population.config import LEGACY_BY_FORMAT, FitOptions, FitSpec, TrainConfig, split_fit_kwargs
from engine.population.forward import ForwardModel
from engine.population.toy import ToyForwardModel

ENGINE = Path(__file__).resolve().parent.parent / "engine"


def test_forward_models_satisfy_the_protocol(sdss_model):
    emulator = em.load(em.default_emulator_path(), device="cpu", bands=list(sdss_model.bands))
    for model in (sdss_model, emulator, ToyForwardModel()):
        assert isinstance(model, ForwardModel), type(model).__name__
    assert not isinstance(object(), ForwardModel)


def test_keywords_split_into_config_options_and_spec():
    cfg_kw, opts, spec = split_fit_kwargs({"members": 2, "steps": 30, "redshift": "observed", "workers": 2,
                                           "resume": True, "selection": "toy-r<20", "forward": "sps"})
    assert cfg_kw == {"members": 2, "steps": 30, "redshift": "observed"}
    assert opts.workers == 2 and opts.resume and opts.distributed and opts.checkpoint_every == 50
    assert spec.selection == "toy-r<20" and spec.forward == "sps" and spec.bands == "auto"
    # given objects are the defaults the keywords override
    _, opts, spec = split_fit_kwargs({"retries": 5}, FitOptions(workers=3), FitSpec(z_max=0.4))
    assert (opts.workers, opts.retries, spec.z_max) == (3, 5, 0.4)
    assert not FitOptions().distributed


def test_old_configs_keep_the_behaviour_they_were_trained_with():
    old = TrainConfig.from_dict({"members": 2, "steps": 10}, format_version=1)
    for key, value in LEGACY_BY_FORMAT[1].items():
        assert getattr(old, key) == value, key
    new = TrainConfig.from_dict(TrainConfig(members=2, steps=10).to_dict())
    assert new == TrainConfig(members=2, steps=10)
    with pytest.raises(ValueError, match="run format version 99"):
        TrainConfig.from_dict({}, format_version=99)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ENGINE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _top_level_imports(tree: ast.Module):
    """Import statements executed when the module is imported (not in functions, not under TYPE_CHECKING)."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If):
            if "TYPE_CHECKING" not in ast.unparse(node.test):
                stack.extend(node.body + node.orelse)
        elif isinstance(node, ast.Try):
            stack.extend(node.body + node.orelse + node.finalbody
                         + [s for h in node.handlers for s in h.body])


def engine_import_graph() -> dict[str, set[str]]:
    """Module -> the ``engine`` modules it imports at import time."""
    files = {_module_name(p): p for p in ENGINE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in _top_level_imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = package
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                mod = ".".join(x for x in (base if node.level else "", node.module or "") if x)
                targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in files else mod for a in node.names]
            edges |= {t for t in targets if t in files and t != name}
        graph[name] = edges
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_engine_has_no_import_cycles():
    graph = engine_import_graph()
    assert "engine.population.forward" in graph["engine.population.execute"] or \
        "engine.population.forward" in graph["engine.population.distributed"]
    assert "engine.population.api" not in graph["engine.population.distributed"]
    assert import_cycles(graph) == []


def test_config_objects_and_keywords_give_the_same_fit(tmp_path, one_torch_thread):
    from engine.population import fit
    from engine.population.flow import FlowConfig
    from engine.population.toy import make_toy_catalog

    cat = make_toy_catalog(300, seed=1)[0]
    flow = FlowConfig(layers=2, hidden=8, bins=4)
    a = fit(cat, tmp_path / "a", members=1, steps=6, batch=64, flow=flow, val_every=3, population_samples=50,
            selection="toy-r<20.5", forward=ToyForwardModel(), checkpoint_every=2)
    b = fit(cat, tmp_path / "b",
            TrainConfig(members=1, steps=6, batch=64, flow=flow, val_every=3, population_samples=50),
            FitOptions(checkpoint_every=2), FitSpec(selection="toy-r<20.5", forward=ToyForwardModel()))
    la = [e["train_loss"] for e in a.history() if e["event"] == "step"]
    lb = [e["train_loss"] for e in b.history() if e["event"] == "step"]
    assert len(la) == 6 and la == lb
    assert a.config["train"] == b.config["train"] and a.config["selection"] == b.config["selection"]
    with pytest.raises(ValueError, match="both in config and as keywords: steps"):
        fit(cat, tmp_path / "c", TrainConfig(members=1), steps=3, forward=ToyForwardModel())
