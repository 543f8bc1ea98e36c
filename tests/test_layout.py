"""Imports run one way (DESIGN §3): every module sits in a layer, and a module imports only from
its own layer or the layers below it.

The table below is the rule, written once. A new module must be placed in it (the test says so),
and an import from a higher layer fails, naming the importing module and the import — module-level
and function-level imports alike, since a function-level import is the same dependency, only
deferred. Inside a layer any direction is allowed (Python refuses true cycles at import time).

The two older tests are kept: inference never pulls the trainer in, and ``nc.Trainer`` is reachable.
"""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "noisecraft"

# Lowest first. A name is a module or a package (then every module under it); the longest matching
# name places a module. Names are relative to ``noisecraft``; "" is the package's own __init__
# (a name imported from it that is not a module counts as "top").
LAYERS: list[tuple[str, list[str]]] = [
    # leaf: no noisecraft imports but each other; facts and helpers everything may use
    ("leaf", ["__version__", "errors", "io", "lock", "devices", "cache", "conditions", "seeding",
              "threads", "shard", "noise", "schedule", "viz", "latentscale", "quality",
              "progress", "checks"]),
    # maths: the diffusion equations over a Denoiser and a schedule
    ("maths", ["denoiser", "process", "grids", "samplers", "losses", "likelihood", "ode",
               "analytic", "guidance", "editing", "spectral", "straightness"]),
    # the backbones: plain nn.Modules that know nothing of diffusion
    ("nets", ["nets"]),
    # reading data sets (the toy sets draw from the analytic mixtures, hence above maths)
    ("data", ["data"]),
    # yardsticks: they read reference data sets, hence above data
    ("metrics", ["metrics"]),
    # what a run is built from: its config, its autoencoder, its frozen text encoder
    ("models", ["config", "autoencoders", "conditioning", "latent"]),
    # a trained run read back (its directory format first), and what is done with it
    ("run", ["rundir", "run", "run_editing", "scoring", "evaluation", "outputs", "pipeline",
             "explain", "diffusers_io", "diffusers_export", "posthoc"]),
    ("train", ["train", "reflow", "distill"]),
    ("cli", ["cli", "__main__"]),
    # the package's front: re-exports everything
    ("top", [""]),
]

# Upward imports that are known, each with its reason and the owner who removes it. An entry that
# no longer occurs fails too, so the list only ever shrinks.
ALLOWED_UPWARD: dict[tuple[str, str], str] = {}


def _layer_of(name: str) -> tuple[int, str]:
    """(rank, the table entry) of a dotted name relative to ``noisecraft``."""
    best: tuple[int, str] | None = None
    for rank, (_, names) in enumerate(LAYERS):
        for entry in names:
            if (name == entry or (entry and name.startswith(entry + "."))) and (
                    best is None or len(entry) > len(best[1])):
                best = (rank, entry)
    if best is None:
        raise KeyError(name)
    return best


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports_of(module: str, path: Path) -> list[tuple[str, int]]:
    """Every noisecraft name ``module`` imports, relative to ``noisecraft``, with its line."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    package = [p for p in package if p]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: climb level − 1 packages from this module's own
                stem = package[:len(package) - (node.level - 1)] + (node.module or "").split(".")
            elif node.module == "noisecraft" or (node.module or "").startswith("noisecraft."):
                stem = node.module.split(".")[1:]
            else:
                continue
            stem = [p for p in stem if p]
            if node.module and not (node.level == 0 and node.module == "noisecraft"):
                found.append((".".join(stem), node.lineno))
            else:  # from . import x: x may be a module or a name; the table places either
                found += [(".".join(stem + [a.name]), node.lineno) for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name == "noisecraft" or a.name.startswith("noisecraft."):
                    found.append((a.name.removeprefix("noisecraft").lstrip("."), node.lineno))
    return found


def upward_imports() -> list[tuple[str, str, int, str, str]]:
    """(module, imported name, line, module's layer, import's layer) for each upward import."""
    bad = []
    for module, path in _modules().items():
        rank, _ = _layer_of(module)
        for name, line in imports_of(module, path):
            try:
                other, _ = _layer_of(name)
            except KeyError:  # a name the package's __init__ defines or re-exports
                other, _ = _layer_of("")
            if other > rank:
                bad.append((module, name, line, LAYERS[rank][0], LAYERS[other][0]))
    return bad


def test_every_module_has_a_layer():
    unplaced = []
    for module in _modules():
        try:
            _layer_of(module)
        except KeyError:
            unplaced.append(module)
    assert not unplaced, f"place these modules in tests/test_layout.py's LAYERS: {unplaced}"


def test_every_import_runs_downward():
    found = upward_imports()
    bad = [f"noisecraft.{m or '__init__'} (layer {lm}) imports noisecraft.{n} (layer {ln}), line {line}"
           for m, n, line, lm, ln in found if not _allowed(m, n)]
    assert not bad, "imports that run up the layers:\n" + "\n".join(bad)


def test_allowed_upward_imports_still_exist():
    found = {(m, n) for m, n, *_ in upward_imports()}
    stale = [key for key in ALLOWED_UPWARD if not any(_matches(key, f) for f in found)]
    assert not stale, f"remove these fixed entries from ALLOWED_UPWARD: {stale}"


def _matches(key: tuple[str, str], found: tuple[str, str]) -> bool:
    (mod, name), (m, n) = key, found
    return m == mod and (n == name or n.startswith(name + "."))


def _allowed(module: str, name: str) -> bool:
    return any(_matches(key, (module, name)) for key in ALLOWED_UPWARD)


def test_the_checker_sees_function_level_and_relative_imports(tmp_path):
    """The parser itself, on a made-up module: relative, absolute and function-level imports."""
    pkg = tmp_path / "noisecraft" / "metrics"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .fid import x\n")
    src = pkg / "features.py"
    src.write_text("from ..io import atomic_write\nimport noisecraft.schedule\n"
                   "def f():\n    from ..run import check_device\n    from .. import data\n")
    found = [n for n, _ in imports_of("metrics.features", src)]
    assert sorted(found) == ["data", "io", "run", "schedule"]
    assert [n for n, _ in imports_of("metrics", pkg / "__init__.py")] == ["metrics.fid"]
    assert _layer_of("run")[0] > _layer_of("metrics.features")[0]


# One home per fact (issue 21): each of these literals is written in exactly one place in src/, and
# everything else imports it from there.
FACTS: dict[str, tuple[object, str]] = {
    "shard suffixes": ((".tar", ".tar.gz", ".tgz"), "data.tar"),
    "data kinds": (("image", "vector", "audio"), "data.transforms"),
    "text condition keys": (("text", "text_mask", "text_pooled"), "conditions"),
}
# Copies still left in files others own, each with the owner who removes it; a stale entry fails.
KNOWN_COPIES: dict[tuple[str, str], str] = {
}


def _fact_places() -> dict[str, list[tuple[str, int]]]:
    """Where each fact's literal occurs; the null label: every ``*LABEL = -1`` assignment."""
    places: dict[str, list[tuple[str, int]]] = {name: [] for name in [*FACTS, "null label"]}
    for module, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Tuple) and all(isinstance(e, ast.Constant) for e in node.elts):
                value = tuple(e.value for e in node.elts)
                places.update({name: places[name] + [(module, node.lineno)]
                               for name, (literal, _) in FACTS.items() if value == literal})
            if (isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id.endswith("LABEL")
                                                     for t in node.targets)
                    and isinstance(node.value, ast.UnaryOp) and isinstance(node.value.op, ast.USub)
                    and isinstance(node.value.operand, ast.Constant) and node.value.operand.value == 1):
                places["null label"].append((module, node.lineno))
    return places


def test_each_fact_has_one_home():
    homes = {**{name: home for name, (_, home) in FACTS.items()}, "null label": "conditions"}
    bad = []
    for name, found in _fact_places().items():
        where = [m for m, _ in found]
        if where.count(homes[name]) != 1:
            bad.append(f"{name}: expected its one definition in noisecraft.{homes[name]}, found {found}")
        bad += [f"{name}: a copy in noisecraft.{m}, line {line}; import it from "
                f"noisecraft.{homes[name]}" for m, line in found
                if m != homes[name] and (name, m) not in KNOWN_COPIES]
    stale = [key for key in KNOWN_COPIES if key[1] not in [m for m, _ in _fact_places()[key[0]]]]
    bad += [f"remove the fixed KNOWN_COPIES entry {key}" for key in stale]
    assert not bad, "\n".join(bad)


INFERENCE = ["noisecraft", "noisecraft.run", "noisecraft.io", "noisecraft.viz", "noisecraft.metrics",
             "noisecraft.cli.sample", "noisecraft.cli.nll", "noisecraft.cli.evaluate"]


def test_inference_never_imports_the_trainer():
    code = ("import importlib, sys\n"
            f"for m in {INFERENCE!r}: importlib.import_module(m)\n"
            "bad = sorted(m for m in sys.modules if m.startswith('noisecraft.train'))\n"
            "print(','.join(bad))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"inference imported {out.stdout.strip()}"


def test_trainer_still_reachable_from_the_top_level():
    import noisecraft as nc

    assert nc.Trainer is nc.train.Trainer
