"""What the benchmark suite runs: methods, families, suites, and the list of runs they expand to.

A run is one ``python -m nwa.fit`` call (a recipe from ``configs/`` plus overrides) identified by
``(task, method, subset, seed)``. Sections of the report select runs by those fields, so a run
two sections need (ProbeX on the ResNet trees is both an NWA row and the "joint" baseline of the
tree experts) is made once.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

CLASSES, PROPERTIES, CONCEPT = "classes", "properties", "concept"


@dataclass(frozen=True)
class Method:
    """A metanetwork as the suite runs it.

    Args:
        name: Display name in the report.
        config: Recipe file under ``configs/``.
        single_layer: The recipe reads the family's layer choice (one layer, or one glob of
            several; ProbeX, Dense, PCA); otherwise the recipe keeps its own layer selection.
        fitted_once: A non-gradient method whose recipe fixes its single epoch (boosted trees).
        extra: Further overrides for every run of the method.
    """

    name: str
    config: str
    single_layer: bool = False
    fitted_once: bool = False
    extra: tuple[str, ...] = ()


@dataclass(frozen=True)
class Family:
    """An architecture family of the vision zoo and the layers its runs read.

    Args:
        arch: Architecture glob (``resnet_*``).
        layers: Candidate layers (names or globs), best first; the first that matches a layer of
            the zoo is used.
        probex: Further overrides of the runs whose encoder is ProbeX (alone or as tree
            experts), e.g. its ranks for the family's layer sizes.
    """

    arch: str
    layers: tuple[str, ...]
    probex: tuple[str, ...] = ()


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("ProbeX", "probex_vision.yaml", single_layer=True),
        Method("Dense", "dense_vision.yaml", single_layer=True),
        Method("StatNN-GBT", "statnn_vision.yaml", fitted_once=True),
        Method("StatNN-MLP", "statnn_mlp_vision.yaml"),
        Method("PCA", "pca_vision.yaml", single_layer=True),
        Method("FlatMLP", "mlp_vision.yaml"),
        Method("WeightNet", "weightnet_vision.yaml"),
        Method("NWPA", "nwpa_vision.yaml"),
    )
}
EXPERTS = Method("ProbeX experts", "experts_vision.yaml", single_layer=True)
_DENSE_ALIGNER = json.dumps({"class_path": "nwa.metanets.Dense", "init_args": {"dim": 128}})
# The aligners, each on the text-facing layers (cross-attention values, the recipe's default) and
# on self-attention values, which see the image alone: how much of a concept the LoRA writes where
# the text enters, against where it does not.
ALIGN_LAYERS = {"cross-attn": "*attn2.to_v", "self-attn": "*attn1.to_v"}
ALIGNERS: dict[str, tuple[str, ...]] = {
    "ProbeX": (),
    "Dense": ("--model.init_args.encoder", _DENSE_ALIGNER),
    "ProbeX self-attn": ("--data.init_args.layers", ALIGN_LAYERS["self-attn"]),
    "Dense self-attn": (
        "--model.init_args.encoder",
        _DENSE_ALIGNER,
        "--data.init_args.layers",
        ALIGN_LAYERS["self-attn"],
    ),
}


def aligner_layers(name: str) -> str:
    """Which of :data:`ALIGN_LAYERS` an aligner of :data:`ALIGNERS` reads."""
    args = ALIGNERS[name]
    given = (
        args[args.index("--data.init_args.layers") + 1]
        if "--data.init_args.layers" in args
        else None
    )
    return next((k for k, v in ALIGN_LAYERS.items() if v == given), "cross-attn")


FAMILIES: dict[str, Family] = {
    "resnet": Family("resnet_*", ("layer4.0.conv2.weight",)),
    # The MLP matrices of every block, one ProbeX each, concatenated (vit_wide: one block, two
    # 256 x 256 matrices). On the 64-wide vit_tiny one matrix alone held too little for 70
    # training models per tree, and the best single layers of its two trees differed.
    # Ranks 32 on these 256 x 256 matrices: with the recipe's 64, ProbeX had 1/15 of Dense's
    # parameters (about rows x cols / (rank_u x rank_v)); with 32, 1/57 at the same accuracy.
    "vit": Family(
        "vit_*",
        ("blocks.*.mlp.fc*.weight",),
        probex=(
            *("--model.init_args.encoder.init_args.rank_u", "32"),
            *("--model.init_args.encoder.init_args.rank_v", "32"),
        ),
    ),
}


@dataclass(frozen=True)
class Suite:
    """One preset of the benchmark.

    Args:
        name: ``quick`` or ``full``.
        vision_zoo: Zoo with the ``vision-*`` trees and the ``forest-*`` members.
        lora_zoo: Zoo with the ``unet_lora`` members for the aligners.
        seeds: Seeds of every run.
        epochs: ``max_epochs`` per method name (``default`` for the others); ``None`` keeps the
            recipe's.
        nwa_methods: Methods of the Neural Weight Archeology and WeightNet sections.
        tree_methods: Methods compared per tree (training classes and properties).
        aligners: The weight-to-text aligners (:data:`ALIGNERS`) of the concept task.
        vision_tasks: Tasks of the vision zoo's runs (the NWA section and per tree).
        archeology: Whether the mixed-architecture section runs when ``--tasks`` is not given.
    """

    name: str
    vision_zoo: str
    lora_zoo: str
    seeds: tuple[int, ...] = (0, 1, 2)
    epochs: dict[str, int | None] = field(default_factory=dict)
    nwa_methods: tuple[str, ...] = tuple(METHODS)
    tree_methods: tuple[str, ...] = ("ProbeX", "Dense", "StatNN-GBT")
    aligners: tuple[str, ...] = tuple(ALIGNERS)
    vision_tasks: tuple[str, ...] = (CLASSES, PROPERTIES)
    archeology: bool = True

    def max_epochs(self, method: str) -> int | None:
        return self.epochs.get(method, self.epochs.get("default"))


SUITES: dict[str, Suite] = {
    "quick": Suite(
        "quick",
        vision_zoo="small",
        lora_zoo="small",
        epochs={"default": 40, "NWPA": 20, "aligner": 60},
    ),
    "full": Suite(
        "full",
        vision_zoo="default_vision",
        lora_zoo="default_lora",
        # Every method trains for its recipe's epochs (150 for most): at 80 most runs still had
        # their best validation loss in the last epochs. FlatMLP (best epochs 4-58 of 60) is cut
        # short. NWPA reads whole networks now and learns late: on the ResNet trees' classes its
        # validation accuracy was 0.71 at epoch 15 and 1.00 from epoch 33 (its recipe: 40).
        epochs={"default": None, "FlatMLP": 60, "aligner": 200},
        # Sized to 2 hours on 2 CPU cores (benchmarks/results/bench-full-2026-12-04/notes.md).
        # On the 256-wide ResNets 2 epochs over 280 models took FlatMLP 53 s and WeightNet 72 s
        # with start-up, and NWPA more than 8 min: those run with --methods (Dense runs per tree
        # below).
        # Property regression is the property zoo's section: on these trees every fine-tune
        # converges and the labels hardly vary. The archeology section (about 80 min for 3
        # seeds) runs with --tasks archeology.
        nwa_methods=("ProbeX", "StatNN-GBT", "StatNN-MLP", "PCA"),
        vision_tasks=(CLASSES,),
        archeology=False,
    ),
}


@dataclass(frozen=True)
class RunSpec:
    """One run of the suite.

    Args:
        task: ``classes``, ``properties`` or ``concept``.
        method: Method name as reported.
        subset: Which models: a tree id, ``resnet trees``, ``forest``, or the LoRA zoo.
        seed: ``seed_everything``.
        args: The ``nwa.fit`` arguments (without logger and output folders).
    """

    task: str
    method: str
    subset: str
    seed: int
    args: tuple[str, ...]

    @property
    def key(self) -> str:
        """Folder name of the run: stable, readable, unique per (task, method, subset, seed)."""
        text = f"{self.task}-{self.method}-{self.subset}-s{self.seed}"
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)

    def to_dict(self) -> dict[str, object]:
        return asdict(self) | {"key": self.key}


def layer_for(family: Family, layers: Sequence[str]) -> str:
    for candidate in family.layers:
        if any(fnmatch.fnmatchcase(name, candidate) for name in layers):
            return candidate
    raise ValueError(
        f"none of the {family.arch} layers {list(family.layers)} is in the zoo; "
        f"it has {list(layers)[:8]}..."
    )


def _method_args(
    suite: Suite, method: Method, family: Family, layers: Sequence[str], epochs_key: str
) -> list[str]:
    args = ["--config", str(CONFIGS / method.config), "--data.init_args.arch", family.arch]
    if method.single_layer:
        args += ["--data.init_args.layers", layer_for(family, layers)]
    epochs = suite.max_epochs(epochs_key)
    if epochs is not None and not method.fitted_once:
        args += ["--trainer.max_epochs", str(epochs)]
    if method.name in ("ProbeX", EXPERTS.name):
        args += family.probex
    return [*args, *method.extra]


def _task_args(task: str) -> list[str]:
    if task == PROPERTIES:
        return ["--config", str(CONFIGS / "shared" / "regression.yaml")]
    return ["--data.init_args.target", task]


def plan(
    suite: Suite,
    vision_zoo: str,
    lora_zoo: str,
    trees: Sequence[str],
    layers: dict[str, Sequence[str]],
) -> list[RunSpec]:
    """Every run of ``suite``, seed by seed (so a partial report has all methods of a seed).

    Args:
        suite: The preset.
        vision_zoo: Zoo argument of the vision runs (name or folder); empty: no vision runs.
        lora_zoo: Zoo argument of the aligner runs; empty: no aligner runs.
        trees: The vision zoo's pretrained trees (``vision-*``).
        layers: Tensor names of one model per family present in the zoo.
    """
    each = [
        *(_vision_runs(suite, vision_zoo, trees, layers) if vision_zoo else ()),
        *(_aligner_runs(suite, lora_zoo) if lora_zoo else ()),
    ]
    # --seed_everything after the configs: a later --config would reset it to the recipe's
    return [
        RunSpec(task, name, subset, seed, (*args, "--seed_everything", str(seed)))
        for seed in suite.seeds
        for task, name, subset, args in each
    ]


Planned = tuple[str, str, str, list[str]]  # task, method, subset, nwa.fit arguments


def _vision_runs(
    suite: Suite, zoo: str, trees: Sequence[str], layers: dict[str, Sequence[str]]
) -> Iterator[Planned]:
    """One seed's runs on the vision zoo: the NWA section on the ResNet trees, each method per
    tree, ProbeX on the forest, and per family one joint ProbeX against the tree experts."""

    def on(pattern: str) -> list[str]:
        return ["--data.init_args.zoo", zoo, "--data.init_args.trees", pattern]

    def family_of(tree: str) -> str:
        return next(f for f in FAMILIES if f in tree)

    resnet, probex = FAMILIES["resnet"], METHODS["ProbeX"]
    for task in suite.vision_tasks:
        for name in suite.nwa_methods:
            args = _method_args(suite, METHODS[name], resnet, layers["resnet"], name)
            yield task, name, "resnet trees", [*args, *_task_args(task), *on('["vision-*"]')]
    for tree in trees:
        fam = family_of(tree)
        for task in suite.vision_tasks:
            for name in suite.tree_methods:
                args = _method_args(suite, METHODS[name], FAMILIES[fam], layers[fam], name)
                yield task, name, tree, [*args, *_task_args(task), *on(f"[{tree}]")]
    args = _method_args(suite, probex, resnet, layers["resnet"], "ProbeX")
    yield CLASSES, "ProbeX", "forest", [*args, *_task_args(CLASSES), *on('["forest-*"]')]
    for fam in sorted({family_of(t) for t in trees}):
        for m in (probex, EXPERTS):
            if m is probex and fam == "resnet" and "ProbeX" in suite.nwa_methods:
                continue  # the NWA section's ProbeX run on the ResNet trees is this run
            args = _method_args(suite, m, FAMILIES[fam], layers[fam], "ProbeX")
            yield (
                CLASSES,
                m.name,
                f"{fam} trees",
                [*args, *_task_args(CLASSES), *on('["vision-*"]')],
            )


def _aligner_runs(suite: Suite, zoo: str) -> Iterator[Planned]:
    epochs = suite.max_epochs("aligner")
    for name in suite.aligners:
        args = ["--config", str(CONFIGS / "probex_sd.yaml"), "--data.init_args.zoo", zoo]
        if epochs is not None:
            args += ["--trainer.max_epochs", str(epochs)]
        yield CONCEPT, name, "lora", [*args, *ALIGNERS[name]]
