"""NwaCLI: LightningCLI with the data-to-model links, W&B by default, and the config everywhere."""

from __future__ import annotations

import importlib
import os
import re
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import (
    LightningArgumentParser,
    LightningCLI,
    SaveConfigCallback,
    _InstantiatorFn,
)
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from nwa.dashboard import wandb_mode
from nwa.errors import ConfigError, NwaError
from nwa.metanets.inputs import check_input
from nwa.outputs import (
    check_trainer_args,
    default_root,
    plan_launch,
    route_outputs,
    run_callbacks,
)
from nwa.recipes import KEY, expand_configs
from nwa.resume import RunCheckpoint, RunPlan, global_rank, record_launch


class ConfigEverywhere(SaveConfigCallback):
    """Saves the full config as ``config.yaml``, into the W&B run config, and into every checkpoint."""

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._config_dict = self.parser.dump(self.config, skip_none=False, format="yaml")
        for logger in trainer.loggers:
            experiment = getattr(logger, "experiment", None)
            if isinstance(logger, WandbLogger) and trainer.is_global_zero:
                experiment.config.update(yaml.safe_load(self._config_dict), allow_val_change=True)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # config.yaml in the log dir is shared by runs of one logger; keep a copy beside the checkpoints.
        ckpt = trainer.checkpoint_callback
        if (
            trainer.is_global_zero
            and getattr(ckpt, "dirpath", None)
            and getattr(self, "_config_dict", None)
        ):
            run_dir = Path(ckpt.dirpath).parent
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "config.yaml").write_text(self._config_dict)

    def on_save_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint["nwa_config"] = getattr(self, "_config_dict", None)


class Summary(Callback):
    """Prints the data module's description once training starts."""

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        dm = trainer.datamodule
        if trainer.is_global_zero and dm is not None and hasattr(dm, "describe"):
            print(f"nwa: {dm.describe()}", flush=True)


class NwaCLI(LightningCLI):
    """``python -m nwa.fit``/``nwa.test``: configs compose (``--config a.yaml --config b.yaml``)
    and any field can be overridden on the command line.

    A fit writes everything into its run folder ``<default_root_dir>/<run_name>/<id>`` and
    resumes with ``--ckpt_path last`` (see :mod:`nwa.resume`)."""

    def __init__(self, *args: Any, fragments: Sequence[str] = (), **kwargs: Any) -> None:
        self.fragments = [str(f) for f in fragments]
        kwargs.setdefault("save_config_callback", ConfigEverywhere)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("parser_kwargs", {"default_env": False})
        self.plan: RunPlan | None = None
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.shapes", "model.init_args.shapes", apply_on="instantiate")
        parser.link_arguments("data.targets", "model.init_args.targets", apply_on="instantiate")
        parser.add_argument(
            "--run_name",
            type=str | None,
            default=None,
            help="Run name: W&B name and the run folder <default_root_dir>/<run_name>/<id> "
            "(default: the recipe's file name); --ckpt_path last resumes the newest run of this name.",
        )
        parser.add_argument(
            f"--{KEY}",
            type=list[str] | None,
            default=None,
            help="The config fragments a recipe file is made of (paths relative to it), read "
            "before it (nwa.recipes); set in recipes, not on the command line.",
        )
        parser.add_argument(
            "--group", type=str | None, default=None, help="W&B group, e.g. the zoo or experiment."
        )
        parser.add_lightning_class_args(RunCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/loss",
                "checkpoint.mode": "min",
                "checkpoint.save_top_k": 1,
                "checkpoint.save_last": True,
                "checkpoint.filename": "best-{epoch}",
                "trainer.logger": default_logger(),
                "trainer.default_root_dir": default_root(),
                "trainer.callbacks": [{"class_path": "nwa.cli.Summary"}],
            }
        )

    def _add_instantiators(self) -> None:
        super()._add_instantiators()
        # jsonargparse turns an exception raised while building a class into a long usage error;
        # nwa's own errors (a missing zoo, layer or label) should end the run with one line.
        model_fn = _InstantiatorFn(cli=self, key="model")
        self.parser.add_instantiator(_one_line_errors(model_fn), LightningModule, prepend=True)
        self.parser.add_instantiator(_one_line_errors(None), LightningDataModule, prepend=True)

    def _parse_ckpt_path(self) -> None:
        # The config is authoritative (nwa.test takes it from the checkpoint when none is given);
        # Lightning's merge of checkpoint hyperparameters cannot rebuild class_path arguments.
        return

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        trainer = cfg.get("trainer", {})
        check_pairing(cfg)
        # already expanded: a saved config.yaml must not list fragments relative to the recipe
        cfg[KEY] = None
        if self.subcommand == "fit":
            _default_name_and_group(cfg, self.fragments)
            check_trainer_args(trainer)
            if not trainer.get("fast_dev_run"):
                self.plan = plan_launch(cfg)
                if self.plan.note and global_rank() == 0:
                    print(f"nwa: {self.plan.note}", flush=True)
        elif cfg.get("checkpoint") is not None:
            # a config saved by a fit names that run's checkpoint folder: an evaluation writes
            # its outputs beside its own logs instead
            cfg["checkpoint"]["dirpath"] = None
        route_outputs(cfg, self.plan)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        cfg = self.config_init[self.subcommand] if self.subcommand else self.config_init
        extra = [
            self._get(self.config_init, c) for c in self._parser(self.subcommand).callback_keys
        ]
        trainer_config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        if self.subcommand == "fit" and trainer_config.get("enable_checkpointing") is False:
            extra = [c for c in extra if not isinstance(c, ModelCheckpoint)]
            if global_rank() == 0:
                print(
                    "nwa: checkpointing is off (--trainer.enable_checkpointing false): this run "
                    "cannot be resumed, and it is tested with its final weights",
                    flush=True,
                )
        if self.plan is not None:
            extra += run_callbacks(self.plan, trainer_config, cfg.get("seed_everything"))
        try:
            trainer = self._instantiate_trainer(trainer_config, extra)
        except MisconfigurationException as e:
            raise ConfigError(f"trainer: {str(e).strip().splitlines()[0]}") from None
        if self.plan is not None and global_rank() == 0:
            fields = {"group": cfg.get("group"), "config": _config_files(cfg)}
            # the folder each logger chose (CSV's version_N), reused when the run resumes
            fields["logger_versions"] = [getattr(lg, "version", None) for lg in trainer.loggers]
            record_launch(self.plan, fields)
        return trainer


def _default_name_and_group(cfg: Any, fragments: Sequence[str] = ()) -> None:
    """Name a run after its recipe and group it by zoo unless told otherwise (``nwa.runs``
    documents the scheme), so the saved config, the W&B run and the CSV folder all carry both."""
    from nwa.runs import default_group, default_run_name

    logger = cfg.get("trainer", {}).get("logger")
    args = logger["init_args"] if isinstance(logger, dict) else getattr(logger, "init_args", None)
    # an explicit logger name (--trainer.logger.name) is the user's choice: keep it
    if cfg.get("run_name") is None and not (args and args.get("name")):
        recipes = [str(p) for p in cfg.get("config") or [] if str(p) not in fragments]
        cfg["run_name"] = default_run_name(recipes)
    if cfg.get("group") is None:
        cfg["group"] = default_group(cfg.get("data"))


def check_pairing(cfg: Any) -> None:
    """Check ``data.init_args.input`` against the inputs the model class and its encoder declare
    (:mod:`nwa.metanets.inputs`), before any zoo is opened."""
    data_input = _get_path(cfg, "data", "init_args", "input")
    if data_input is None:
        return
    model = cfg.get("model")
    for node in (model, _get_path(cfg, "model", "init_args", "encoder")):
        class_path = _get_path(node, "class_path") if node is not None else None
        if isinstance(class_path, str):
            module, _, name = class_path.rpartition(".")
            try:
                owner = getattr(importlib.import_module(module), name)
            except (ImportError, AttributeError, ValueError):
                continue  # jsonargparse reports an unknown class itself
            check_input(owner, data_input)


def _get_path(cfg: Any, *keys: str) -> Any:
    for key in keys:
        if cfg is None or not hasattr(cfg, "get"):
            return None
        cfg = cfg.get(key)
    return cfg


def _one_line_errors(inner: Any) -> Any:
    def instantiate(
        class_type: type, *args: Any, applied_instantiation_links: Any = None, **kwargs: Any
    ) -> Any:
        try:
            if inner is not None:
                return inner(
                    class_type,
                    *args,
                    applied_instantiation_links=applied_instantiation_links,
                    **kwargs,
                )
            return class_type(*args, **kwargs)
        except NwaError as e:
            print(f"nwa: {e}", file=sys.stderr)
            raise SystemExit(2) from None

    return instantiate


def _own_wandb_service() -> None:
    """Use a W&B service of this process, not one inherited from the process that started it
    (a notebook, a test runner, a job submitted from a shell that used W&B): a run killed while
    logging through a shared service stays open there, and its resumed launch would be refused
    ("run ID ... is in use")."""
    token = re.match(r"\d+-(\d+)-", os.environ.get("WANDB_SERVICE", ""))
    if token and int(token.group(1)) != os.getpid():
        os.environ.pop("WANDB_SERVICE")


def _config_files(cfg: Any) -> list[str]:
    return [str(p) for p in cfg.get("config") or []]


def default_logger() -> dict[str, Any]:
    """W&B (with best-value summaries, :class:`nwa.dashboard.DashboardLogger`), offline unless
    logged in; ``--trainer.logger CSVLogger`` works without an account.
    Its ``save_dir`` left as is follows the run folder (:func:`nwa.outputs.route_outputs`)."""
    return {
        "class_path": "nwa.dashboard.DashboardLogger",
        "init_args": {
            "project": os.environ.get("WANDB_PROJECT", "nwa"),
            "save_dir": default_root(),
            "offline": wandb_mode() == "offline",
            "name": None,
            "group": None,
            "log_model": False,
        },
    }


def main(subcommand: str, args: list[str] | None = None) -> Any:
    """Run one LightningCLI subcommand; nwa's own errors end the process with one line."""
    from nwa.data import ModelZooDataModule
    from nwa.lit import WeightModule  # noqa: F401 - importable short name for configs

    try:
        args, fragments = expand_configs(sys.argv[1:] if args is None else args)
    except NwaError as e:
        print(f"nwa: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    argv = [subcommand, *args]
    # W&B writes an offline run's log every 15 s by default: a killed run would lose up to 15 s
    # of history that its resumed launch does not log again.
    os.environ.setdefault("WANDB_X_TRANSACTION_LOG_FLUSH_INTERVAL", "1")
    _own_wandb_service()
    # The entry points pass their own argv explicitly; Lightning warns about that by default.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
    # A resumed run reopens its own folders, which are not empty by design.
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    warnings.filterwarnings(
        "ignore", message=r"Experiment logs directory .* exists and is not empty"
    )
    try:
        return NwaCLI(
            LightningModule,
            ModelZooDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            args=argv,
            auto_configure_optimizers=False,
            fragments=fragments,
        )
    except NwaError as e:
        print(f"nwa: {e}", file=sys.stderr)
        raise SystemExit(2) from None
