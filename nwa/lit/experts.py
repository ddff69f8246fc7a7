"""Mixture of tree experts: a tree router + one expert (encoder + task head) per tree."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from nwa import calibration
from nwa.errors import ConfigError
from nwa.experts import TreeRouter
from nwa.lit import EncoderFactory, TaskFactory, WeightModule
from nwa.metanets.inputs import check_input
from nwa.tasks import Targets, Task, task_for
from nwa.weights.spec import WeightShapes

Batch = dict[str, torch.Tensor] | torch.Tensor


def take(x: Batch, mask: torch.Tensor) -> Batch:
    """The rows of a batch input (a matrix dict or a tensor) selected by ``mask``."""
    return {k: v[mask] for k, v in x.items()} if isinstance(x, dict) else x[mask]


def concat(parts: list[Batch]) -> Batch:
    if isinstance(parts[0], dict):
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    return torch.cat(parts)


class MixtureOfTreeExperts(WeightModule):
    """One expert per model tree, chosen by a :class:`~nwa.experts.TreeRouter` (ProbeX paper).

    Before training (in ``setup``, so the experts' parameters reach the optimizer) the router is
    fitted on the training models' ``router_layer`` (Ward clustering; the number of trees from
    the dendrogram unless ``n_trees`` is set), and one expert per cluster is built from
    ``encoder`` and ``task``. Every model, in training and evaluation, goes to the expert of its
    nearest cluster centre. Metrics are those of :class:`~nwa.lit.WeightModule`, over all
    experts' predictions, plus ``router/purity`` (clusters of the training models against the
    manifest's trees), ``router/n_trees``, and ``val/router_purity``/``test/router_purity`` (the
    routed held-out models against their trees).

    Model selection is per expert by default, as if each tree's expert were trained alone: after
    every validation each expert whose own validation loss (on the held-out models routed to it)
    is its lowest so far is kept, and evaluation and the checkpoints use the kept experts. The
    loss of that kept mixture is logged as ``val/selected_loss`` (it can only fall), which the
    checkpoint should monitor (``checkpoint.monitor: val/selected_loss``, as in
    ``configs/experts_vision.yaml``); with ``val/loss`` the best checkpoint misses the experts
    that improve after it. ``selection: shared`` keeps the experts of one epoch, chosen by the
    checkpoint's monitor, and logs ``val/selected_loss`` as the current loss.

    Under DDP a batch may hold no model of some tree, leaving that expert without gradients:
    use ``trainer.strategy: ddp_find_unused_parameters_true``.

    A subclass of ``WeightModule`` so that ``python -m nwa.fit`` accepts it and it shares the
    argument checks, hyperparameter saving, optimizer and metric logging; its :meth:`build`
    makes the router in place of the single encoder, and the experts come in ``setup``.

    Args:
        encoder: Each expert's metanetwork, as ``class_path`` + ``init_args``.
        task: Each expert's task; by default the one that fits the data's targets.
        shapes: Linked from the data module; leave unset.
        targets: Linked from the data module; leave unset.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        head_hidden: Hidden width of the default task's head (``None``: linear).
        scheduler: ``none`` or ``cosine``.
        router_layer: The layer the router clusters (one of the selected layers); ``None``: the
            first selected layer. Needs ``data.input`` ``matrix`` or ``flat``.
        n_trees: Number of trees; ``None`` reads it from the dendrogram.
        gap_ratio: Dendrogram height ratio that separates trees (see
            :func:`nwa.experts.count_trees`).
        selection: ``per_expert`` (each expert's best epoch on its own validation models) or
            ``shared`` (one epoch for all).
    """

    SELECTIONS = ("per_expert", "shared")
    inputs = ("matrix", "flat")
    """The router clusters raw weights: these ``data.input`` families hold them."""

    def __init__(
        self,
        encoder: EncoderFactory,
        task: TaskFactory | None = None,
        shapes: WeightShapes | None = None,
        targets: Targets | None = None,
        lr: float = 1e-3,
        weight_decay: float = 1e-5,
        head_hidden: int | None = None,
        scheduler: str = "none",
        router_layer: str | None = None,
        n_trees: int | None = None,
        gap_ratio: float = 3.0,
        selection: str = "per_expert",
    ) -> None:
        if selection not in self.SELECTIONS:
            raise ConfigError(f"selection must be one of {self.SELECTIONS}, got {selection!r}")
        if shapes is not None:
            layers = list(shapes.layers)
            router_layer = router_layer or layers[0]  # recorded resolved, in the hparams
            if router_layer not in layers:
                raise ConfigError(
                    f"router_layer {router_layer!r} is not among the selected layers {layers}; "
                    "add it to data.layers"
                )
        super().__init__(encoder, task, shapes, targets, lr, weight_decay, head_hidden, scheduler)
        # LightningCLI hands over the arguments as configured; keep the resolved layer
        self.hparams["router_layer"] = router_layer

    # ----- building -----
    def build(self, encoder: EncoderFactory | None, task: TaskFactory | None) -> None:
        """Keep the factories: the experts are built once the router knows the trees (setup)."""
        self._encoder_factory, self._task_factory = encoder, task
        self.router = TreeRouter(self.hparams.n_trees, self.hparams.gap_ratio)
        self.experts = nn.ModuleList()
        self.metrics = nn.ModuleDict({s: self._make_task(1).metrics() for s in ("val", "test")})
        self._routed: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {"val": [], "test": []}
        self._reset_selection(0)

    def _make_task(self, dim: int) -> Task:
        if self._task_factory is not None:
            return self._task_factory(dim, self.targets)
        return task_for(dim, self.targets, self.hparams.head_hidden)

    def _build_experts(self, k: int) -> None:
        experts = []
        for _ in range(k):
            enc = self._encoder_factory(self.shapes)
            experts.append(nn.ModuleDict({"encoder": enc, "task": self._make_task(enc.out_dim)}))
        self.experts = nn.ModuleList(experts)
        self._reset_selection(k)

    def _reset_selection(self, k: int) -> None:
        """No expert kept yet; the current epoch's validation loss sums and model counts zeroed."""
        self.best_loss = torch.full((k,), float("inf"))
        self.best_epoch = [-1] * k
        self._best_state: list[dict[str, torch.Tensor] | None] = [None] * k
        self._kept_residuals: list[torch.Tensor | None] = [None] * k  # of each kept expert
        self._val_sums, self._val_counts = torch.zeros(k), torch.zeros(k)

    @property
    def task(self) -> Task:
        """The experts' shared kind of task (for predictions; every expert's task is alike)."""
        return self.experts[0]["task"] if len(self.experts) else self._make_task(1)

    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule if self.trainer is not None else None
        if dm is not None:
            check_input(self, dm.input)
        # The router is fitted with training, once; evaluation gets it (and the experts) from a
        # checkpoint, in on_load_checkpoint.
        if stage == "fit" and dm is not None and not len(self.experts):
            self._fit_router(dm)

    def _fit_router(self, dm: Any) -> None:
        """Fit the router on the training models, then build and prepare one expert per tree."""
        loader = dm.loader(dm.splits["train"])
        batches = [(self._router_input(b["x"]), b["y"]) for b in loader]
        rows = loader.dataset.rows
        trees = list(rows["tree"]) if "tree" in rows else None
        clusters = self.router.fit(torch.cat([f for f, _ in batches]), trees)
        self._build_experts(self.router.n_trees)
        y = torch.cat([y for _, y in batches])
        # Non-gradient encoder parts (PCA) need every input; read them again only then.
        x = concat([b["x"] for b in loader]) if hasattr(self.experts[0]["encoder"], "fit") else None
        for k, expert in enumerate(self.experts):
            mask = clusters == k
            # Each expert sees only its own tree (the paper: other trees' models hurt).
            if hasattr(expert["task"], "fit_scaler"):
                expert["task"].fit_scaler(y[mask] if mask.sum() > 1 else y)
            if x is not None:
                expert["encoder"].fit(take(x, mask))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["router_trees"] = list(self.router.tree_names)
        kept = [k for k, state in enumerate(self._best_state) if state is not None]
        if self.hparams.selection != "per_expert" or not kept:
            return
        if getattr(self, "calibration", None) is not None:
            # residuals of the kept experts, which evaluation uses, whenever they were kept
            checkpoint[calibration.KEY] = self.calibration
        # The trained weights stay in state_dict (to resume training); the kept experts go
        # beside them and replace them when the checkpoint is loaded for evaluation.
        checkpoint["kept_experts"] = {
            "loss": self.best_loss.clone(),
            "epoch": list(self.best_epoch),
            "state": {
                f"{k}.{name}": t.detach().cpu()
                for k in kept
                for name, t in self._best_state[k].items()
            },
            "residuals": {k: r.cpu() for k, r in enumerate(self._kept_residuals) if r is not None},
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        centres = checkpoint["state_dict"].get("router.centres")
        if centres is not None and len(self.experts) != centres.shape[0]:
            self._build_experts(centres.shape[0])
        self.router.tree_names = list(checkpoint.get("router_trees", []))
        self.calibration = checkpoint.get(calibration.KEY)
        kept = checkpoint.get("kept_experts")
        if kept is None or self.hparams.selection != "per_expert":
            return
        self.best_loss = kept["loss"].clone()
        self.best_epoch = list(kept["epoch"])
        states: list[dict[str, torch.Tensor]] = [{} for _ in self._best_state]
        for key, t in kept["state"].items():
            k, name = key.split(".", 1)
            states[int(k)][name] = t
        self._best_state = [s or None for s in states]
        for k, r in kept.get("residuals", {}).items():
            self._kept_residuals[int(k)] = r
        # Lightning loads state_dict after this hook: resuming training continues from the
        # trained weights, anything else (test, predict, load_from_checkpoint) gets the kept ones.
        trainer = self._trainer
        if trainer is None or trainer.state.fn != "fit":
            checkpoint["state_dict"].update(
                {f"experts.{key}": t for key, t in kept["state"].items()}
            )

    def _check_built(self) -> None:
        if not len(self.experts):
            raise ConfigError(
                "MixtureOfTreeExperts has no router or experts yet: train it (python -m nwa.fit) "
                "or evaluate a checkpoint (--ckpt_path)"
            )

    def on_validation_start(self) -> None:
        self._check_built()

    def on_test_start(self) -> None:
        self._check_built()

    def on_predict_start(self) -> None:
        self._check_built()

    def on_fit_start(self) -> None:  # WeightModule's fits one scaler/encoder; done in setup
        if self.hparams.selection != "per_expert":
            return
        for cb in self.trainer.checkpoint_callbacks:
            if cb.monitor not in (None, "val/selected_loss"):
                rank_zero_warn(
                    f"MixtureOfTreeExperts keeps each expert's best epoch, but the checkpoint "
                    f"monitors {cb.monitor!r}: its best checkpoint misses experts that improve "
                    "later; set checkpoint.monitor: val/selected_loss"
                )

    def on_fit_end(self) -> None:
        # The model left in memory is the one the checkpoints evaluate.
        for expert, state in zip(self.experts, self._best_state, strict=True):
            if state is not None:
                expert.load_state_dict(state)

    # ----- routing and forward -----
    def _router_input(self, x: Batch) -> torch.Tensor:
        """The router layer's flattened weights, [B, d_H * d_W], from a matrix or flat batch."""
        name = self.hparams.router_layer
        if isinstance(x, dict):
            return x[name].flatten(1)
        start = 0
        for layer, (d_h, d_w) in self.shapes.layers.items():
            if layer == name:
                return x[:, start : start + d_h * d_w]
            start += d_h * d_w
        raise KeyError(name)

    def route(self, x: Batch) -> torch.Tensor:
        """Cluster (expert) id of each model in the batch, [B]."""
        return self.router.route(self._router_input(x))

    def forward(self, x: Batch, clusters: torch.Tensor | None = None) -> torch.Tensor:
        clusters = self.route(x) if clusters is None else clusters
        out = None
        for k, expert in enumerate(self.experts):
            mask = clusters == k
            if not mask.any():
                continue
            o = expert["task"](expert["encoder"](take(x, mask)))
            if out is None:
                out = o.new_zeros(len(clusters), o.shape[1])
            out[mask] = o
        return out

    def _expert_losses(
        self, out: torch.Tensor, y: torch.Tensor, clusters: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each expert's loss summed over its models (its task standardizes with its own
        scaler), [K], and its number of models, [K]."""
        sums, counts = [], []
        for k, expert in enumerate(self.experts):
            mask = clusters == k
            n = mask.sum()
            sums.append(expert["task"].loss(out[mask], y[mask]) * n if n else out.new_zeros(()))
            counts.append(n.to(out.dtype))
        return torch.stack(sums), torch.stack(counts)

    # ----- steps -----
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        clusters = self.route(batch["x"])
        sums, _ = self._expert_losses(self(batch["x"], clusters), batch["y"], clusters)
        n = len(batch["y"])
        loss = sums.sum() / n
        self.log("train/loss", loss, prog_bar=True, batch_size=n, on_epoch=True, on_step=False)
        return loss

    def _eval_step(self, batch: dict[str, Any], stage: str) -> None:
        clusters, dist = self.router.nearest(self._router_input(batch["x"]))
        out = self(batch["x"], clusters)
        sums, counts = self._expert_losses(out, batch["y"], clusters)
        n = len(batch["y"])
        loss = sums.sum() / n
        self.log(f"{stage}/loss", loss, batch_size=n, sync_dist=True, prog_bar=stage == "val")
        if stage == "val":
            self._val_sums = self._val_sums.to(sums) + sums.detach()
            self._val_counts = self._val_counts.to(counts) + counts
            self._keep_val(out, batch["y"], clusters, dist)
        self.task.update(self.metrics[stage], out, batch["y"])
        self._routed[stage].append((clusters.cpu(), batch["index"].cpu()))

    def _log_router(self, stage: str) -> None:
        routed, self._routed[stage] = self._routed[stage], []
        self.log_dict(
            {"router/purity": self.router.train_purity, "router/n_trees": self.router.n_trees * 1.0}
        )
        dm = self.trainer.datamodule
        if not routed or dm is None or "tree" not in dm.dataset(stage).rows:
            return
        clusters = torch.cat([c for c, _ in routed]).tolist()
        trees = dm.dataset(stage).rows["tree"].iloc[torch.cat([i for _, i in routed]).tolist()]
        self.log(f"{stage}/router_purity", self.router.purity(clusters, list(trees)))

    def on_validation_epoch_start(self) -> None:
        self._val_sums.zero_()
        self._val_counts.zero_()

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")
        self._log_router("val")
        if self.trainer.sanity_checking:
            return
        strategy = self.trainer.strategy
        sums = strategy.reduce(self._val_sums.to(self.device), reduce_op="sum")
        counts = strategy.reduce(self._val_counts.to(self.device), reduce_op="sum")
        losses = (sums / counts.clamp(min=1)).cpu()
        seen = counts.cpu() > 0
        self.log_dict(
            {f"val/loss_expert{k}": losses[k] for k in range(len(losses)) if seen[k]},
            sync_dist=True,  # already reduced: averages identical values, silences the warning
        )
        if self.hparams.selection == "shared":
            self.log("val/selected_loss", sums.sum() / counts.sum().clamp(min=1), sync_dist=True)
        else:
            selected = self.keep_best(losses, counts.cpu(), self.current_epoch)
            if selected is not None:
                self.log("val/selected_loss", selected, sync_dist=True)
        self._calibrate_kept()

    def _calibrate_kept(self) -> None:
        """The calibration record of the evaluated mixture: validation residuals of the kept
        experts (each from the epoch it was kept; this epoch's under shared selection) and every
        validation model's distance to its nearest tree (for "none of the known trees")."""
        outputs = self._val_outputs()
        if outputs is None:
            return
        out, y, clusters, dist = outputs
        residuals = None
        if self.targets.kind == "regression":
            residuals = (y.float() - out.float()).abs()
            if self.hparams.selection == "per_expert":
                for k in range(len(self.experts)):
                    if self.best_epoch[k] == self.current_epoch:
                        self._kept_residuals[k] = residuals[clusters == k]
                kept = [r for r in self._kept_residuals if r is not None]
                residuals = torch.cat(kept) if kept else None
        self._calibrate(residuals, distances=dist)

    def keep_best(
        self, losses: torch.Tensor, counts: torch.Tensor, epoch: int
    ) -> torch.Tensor | None:
        """Keep (a copy of) each expert whose validation loss is its lowest so far.

        Args:
            losses: Each expert's mean validation loss this epoch, [K].
            counts: Each expert's number of validation models, [K] (0: not seen, not kept).
            epoch: The epoch the losses belong to.

        Returns:
            The validation loss of the kept mixture (the kept losses weighted by ``counts``),
            or ``None`` while no expert is kept.
        """
        seen = counts > 0
        for k, expert in enumerate(self.experts):
            if seen[k] and losses[k] < self.best_loss[k]:
                self.best_loss[k], self.best_epoch[k] = losses[k], epoch
                self._best_state[k] = {
                    name: t.detach().clone() for name, t in expert.state_dict().items()
                }
        kept = seen & torch.isfinite(self.best_loss)
        if not kept.any():
            return None
        weights = counts[kept].to(self.best_loss)
        return (self.best_loss[kept] * weights).sum() / weights.sum()

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")
        self._log_router("test")
