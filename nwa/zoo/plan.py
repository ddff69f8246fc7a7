"""Zoo configs: load the YAML, instantiate recipes by ``class_path``, validate, and plan every job.

A zoo config::

    name: tiny                 # zoo name (and cache folder prefix)
    seed: 0                    # one seed for the whole zoo
    description: ...           # optional free text
    recipes:                   # one or more recipes; their models share one zoo
      - class_path: nwa.zoo.vision.VisionRecipe
        init_args: {name: vision, archs: [resnet_tiny], ...}

Everything is checked here, before any training: unknown keys, classes that do not import or are
not :class:`~nwa.zoo.recipe.Recipe` subclasses, unknown constructor arguments, each recipe's own
``validate()``, and the plans (unique ids, members after their roots, at least one model).
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import inspect
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nwa.errors import ConfigError
from nwa.zoo.recipe import Job, Recipe

CONFIG_KEYS = ("name", "seed", "description", "recipes")
CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "zoo"
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass
class ZooConfig:
    """A parsed zoo config.

    Attributes:
        name: Zoo name.
        seed: Zoo seed.
        recipes: ``[{"class_path": str, "init_args": dict}, ...]``.
        where: The file it came from (for messages).
        description: Free text.
    """

    name: str
    seed: int
    recipes: list[dict[str, Any]]
    where: str = "<config>"
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "seed": self.seed,
            "description": self.description,
            "recipes": self.recipes,
        }

    def digest(self) -> str:
        """Short hash of everything that affects the models (not the description), with the
        identity of the data each recipe reads (:meth:`Recipe.data_keys`)."""
        body = json.dumps(
            {
                "name": self.name,
                "seed": self.seed,
                "recipes": self.recipes,
                "data": data_keys(self),
            },
            sort_keys=True,
        )
        return hashlib.sha256(body.encode()).hexdigest()[:10]


def data_keys(config: ZooConfig) -> list[list[str]]:
    """Each recipe's :meth:`~nwa.zoo.recipe.Recipe.data_keys` (empty where the class does not
    import: :func:`make_plan` reports that)."""
    out = []
    for spec in config.recipes:
        module, _, name = spec["class_path"].rpartition(".")
        try:
            cls = getattr(importlib.import_module(module), name)
            out.append(list(cls.data_keys(spec["init_args"])))
        except (ImportError, AttributeError, ValueError, TypeError, KeyError):
            out.append([])
    return out


def resolve_config(name_or_path: str | Path) -> Path:
    """A config file path, or the name of one in ``configs/zoo`` (``"tiny"`` -> ``configs/zoo/tiny.yaml``)."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    for candidate in (CONFIG_DIR / f"{name_or_path}.yaml", CONFIG_DIR / str(name_or_path)):
        if candidate.is_file():
            return candidate
    known = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    raise ConfigError(
        f"{name_or_path}: no such config file or name (known names: {', '.join(known)})"
    )


def load_config(source: str | Path | dict[str, Any] | ZooConfig) -> ZooConfig:
    """Parse a config from a file, a name in ``configs/zoo``, or a dict.

    Raises:
        ConfigError: Unreadable YAML, unknown keys, or missing/ill-typed values, naming the file.
    """
    if isinstance(source, ZooConfig):
        return source
    if isinstance(source, dict):
        raw, where = source, "<dict>"
    else:
        path = resolve_config(source)
        where = str(path)
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"{where}: invalid YAML ({e})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: a zoo config is a mapping with keys {', '.join(CONFIG_KEYS)}")
    if unknown := sorted(set(raw) - set(CONFIG_KEYS)):
        raise ConfigError(f"{where}: unknown keys {unknown}; allowed {', '.join(CONFIG_KEYS)}")
    name, seed, recipes = raw.get("name"), raw.get("seed", 0), raw.get("recipes")
    if not isinstance(name, str) or not _SAFE_ID.match(name):
        raise ConfigError(
            f"{where}: 'name' must be a simple name (letters, digits, . _ -), got {name!r}"
        )
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ConfigError(f"{where}: 'seed' must be an integer, got {seed!r}")
    if not isinstance(recipes, list) or not recipes:
        raise ConfigError(
            f"{where}: 'recipes' must be a non-empty list of {{class_path, init_args}}"
        )
    clean = []
    for i, spec in enumerate(recipes):
        if not isinstance(spec, dict) or not isinstance(spec.get("class_path"), str):
            raise ConfigError(f"{where}: recipes[{i}] needs a 'class_path' string")
        if extra := sorted(set(spec) - {"class_path", "init_args"}):
            raise ConfigError(
                f"{where}: recipes[{i}] has unknown keys {extra}; allowed class_path, init_args"
            )
        args = spec.get("init_args") or {}
        if not isinstance(args, dict):
            raise ConfigError(f"{where}: recipes[{i}].init_args must be a mapping")
        clean.append({"class_path": spec["class_path"], "init_args": dict(args)})
    return ZooConfig(name, seed, clean, where, str(raw.get("description", "") or ""))


def instantiate(spec: dict[str, Any], where: str) -> Recipe:
    """Import ``class_path`` and call it with ``init_args``; clear errors for every failure."""
    class_path, args = spec["class_path"], spec["init_args"]
    module_name, _, cls_name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), cls_name)
    except (ImportError, AttributeError, ValueError) as e:
        raise ConfigError(
            f"{where}: cannot import recipe class_path {class_path!r} ({e})"
        ) from None
    if not (inspect.isclass(cls) and issubclass(cls, Recipe)):
        raise ConfigError(f"{where}: {class_path} is not a nwa.zoo.recipe.Recipe subclass")
    params = inspect.signature(cls.__init__).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        for key in args:
            if key not in params or key == "self":
                close = difflib.get_close_matches(key, [p for p in params if p != "self"], n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ConfigError(f"{where}: {class_path} has no argument {key!r}{hint}")
    try:
        return cls(**args)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {class_path}({', '.join(args)}): {e}") from None


@dataclass
class Plan:
    """Every job of a zoo, validated.

    Attributes:
        config: The config.
        recipes: Instantiated recipes, in config order.
        roots: ``(recipe index, job)`` of every root.
        members: ``(recipe index, job)`` of every member; shards split this list by index mod N.
        classes: Zoo-global class names (union over recipes, first appearance first).
        remap: Per recipe, its local class index -> global index.
    """

    config: ZooConfig
    recipes: list[Recipe]
    roots: list[tuple[int, Job]] = field(default_factory=list)
    members: list[tuple[int, Job]] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)
    remap: list[list[int]] = field(default_factory=list)

    def recipe_name(self, index: int) -> str:
        return getattr(self.recipes[index], "name", f"recipe{index}")


def make_plan(
    config: str | Path | dict[str, Any] | ZooConfig, recipes: list[Recipe] | None = None
) -> Plan:
    """Instantiate, validate and plan every recipe; raise :class:`ConfigError` before any training."""
    cfg = load_config(config)
    if recipes is None:
        recipes = [
            instantiate(spec, f"{cfg.where}: recipes[{i}]") for i, spec in enumerate(cfg.recipes)
        ]
    plan = Plan(cfg, recipes)
    for i, recipe in enumerate(recipes):
        where = f"{cfg.where}: recipes[{i}] ({cfg.recipes[i]['class_path']})"
        try:
            recipe.validate()
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
        names = list(recipe.classes())
        plan.remap.append([_intern(plan.classes, n) for n in names])
        _add_jobs(plan, i, recipe.plan(cfg.seed), where)
    if not plan.members:
        raise ConfigError(f"{cfg.where}: the recipes plan zero models")
    return plan


def _intern(names: list[str], name: str) -> int:
    if name not in names:
        names.append(name)
    return names.index(name)


def _add_jobs(plan: Plan, index: int, jobs: list[Job], where: str) -> None:
    seen = {r for _, j in plan.roots + plan.members for r in j.rows}
    roots = set()
    n_members = 0
    for job in jobs:
        if not isinstance(job, Job) or not _SAFE_ID.match(job.id):
            raise ConfigError(
                f"{where}: plan() returned a bad job or id {getattr(job, 'id', job)!r}"
            )
        if dup := sorted(seen.intersection(job.rows)) or len(set(job.rows)) < len(job.rows):
            raise ConfigError(
                f"{where}: duplicate model id {(dup or [job.id])[0]!r} (give each recipe a distinct name)"
            )
        if job.rows[-1] != job.id or not all(_SAFE_ID.match(r) for r in job.rows):
            raise ConfigError(f"{where}: job {job.id} lists bad outputs {list(job.rows)}")
        seen.update(job.rows)
        if job.kind == "root":
            roots.add(job.id)
            plan.roots.append((index, job))
        elif job.kind == "member":
            if job.parent and job.parent not in roots:
                raise ConfigError(
                    f"{where}: member {job.id} comes before (or without) its root {job.parent!r}"
                )
            plan.members.append((index, job))
            n_members += 1
        else:
            raise ConfigError(
                f"{where}: job {job.id} has kind {job.kind!r}; expected root or member"
            )
    if n_members == 0:
        raise ConfigError(f"{where}: this recipe plans zero models")
