"""Running one suite run in this process and keeping what the report needs.

Each run gets a folder ``<out>/runs/<key>/`` with the CSV log in ``<key>/version_0/``
(``metrics.csv`` per epoch) and the W&B run (offline unless logged in) in ``wandb/``, with its
group, job type, tags and best-value summaries (:mod:`nwa.dashboard`); :mod:`nwa.runs` reads
both, so ``python -m nwa.compare`` works on them. Once it finished, the folder holds
``result.json`` (test metrics, parameter counts, timings) and ``outputs.npz`` (predictions,
targets and representations of every model, with its split and tree). ``result.json`` is
written last and atomically: a folder without it is an unfinished run and is redone, and so is
a run whose recorded command differs from the planned one (a layer changed since), or whose
recipe files have changed content since it ran.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
import math
import multiprocessing
import os
import re
import shutil
import signal
import sys
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from nwa.atomic import atomic_path, atomic_write_text
from nwa.dashboard import finish_run, run_tags, twin_loggers
from nwa.suite.plan import CONCEPT, EXPERTS, RunSpec
from nwa.zoo.build import cpu_cores

RESULT, OUTPUTS = "result.json", "outputs.npz"


class EpochTimer(Callback):
    """Wall time of the training epochs alone (no start-up, validation or checkpointing)."""

    def __init__(self) -> None:
        self.seconds, self.epochs, self._start = 0.0, 0, 0.0

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self.seconds += time.perf_counter() - self._start
        self.epochs += 1


def load_result(folder: Path) -> dict[str, Any] | None:
    """The finished run's result, or ``None`` when it has not finished."""
    path = folder / RESULT
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def _portable(args: Sequence[str]) -> list[str]:
    # recipes by their path under configs/, so a result made in another clone still matches
    return [re.sub(r"^.*/configs/(?=[^/].*\.ya?ml$)", "configs/", a) for a in args]


def recipe_digest(args: Sequence[str]) -> str:
    """A digest of the content of every ``--config`` file in ``args``, in order: a recipe edited
    after a run (another layer glob, learning rate, head) makes the run outdated even though its
    command line reads the same."""
    h = hashlib.sha256()
    for flag, value in zip(args, args[1:]):
        if flag == "--config":
            path = Path(value)
            h.update(path.read_bytes() if path.is_file() else f"missing:{value}".encode())
            h.update(b"\0")
    return h.hexdigest()[:16]


def needs_run(spec: RunSpec, result: dict[str, Any] | None) -> bool:
    """Whether ``spec`` must (re)run given its folder's ``result.json`` (``None``: none yet):
    not finished, failed, or finished with another command or other recipe contents than the
    ones planned now (results from before recipe digests were kept compare commands only)."""
    if result is None or "error" in result:
        return True
    if "recipes" in result and result["recipes"] != recipe_digest(spec.args):
        return True
    return _portable(result.get("args", ())) != _portable(spec.args)


def _number(v: Any) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


def log_dir(folder: Path) -> Path:
    """The CSV log of the run kept in ``folder`` (``metrics.csv``, ``config.yaml``)."""
    return folder / folder.name / "version_0"


@dataclass(frozen=True)
class Dashboard:
    """How the suite's runs appear on W&B (see :mod:`nwa.dashboard`).

    Args:
        group: W&B group of every run of the suite (``bench-quick``).
        zoos: ``--data.init_args.zoo`` value -> ``(zoo name, content hash)``.
    """

    group: str
    zoos: dict[str, tuple[str, str]] = field(default_factory=dict)

    def job_type(self, spec: RunSpec) -> str:
        """``classes``, ``properties``, ``align`` (LoRA concepts), ``per-tree`` or ``experts``."""
        if spec.task == CONCEPT:
            return "align"
        if spec.method == EXPERTS.name:
            return "experts"
        return "per-tree" if spec.subset.startswith("vision-") else spec.task

    def tags(self, spec: RunSpec) -> list[str]:
        args = list(spec.args)
        zoo = args[args.index("--data.init_args.zoo") + 1] if "--data.init_args.zoo" in args else ""
        name, digest = self.zoos.get(zoo, (Path(zoo).name, "unknown"))
        return run_tags(spec.method, spec.subset, name, digest, spec.seed)


def logger_args(
    folder: Path, spec: RunSpec | None = None, board: Dashboard | None = None
) -> list[str]:
    """W&B and CSV logging into ``folder`` under the run's name (its key: runs compared with
    ``nwa.compare`` or synced to W&B keep it), and no per-run progress bar. The CSV log is
    ``<folder>/<key>/version_0``, the W&B run ``<folder>/wandb/``."""
    board = board or Dashboard("bench")
    job_type = board.job_type(spec) if spec else None
    tags = board.tags(spec) if spec else []
    fields = {"method": spec.method, "tree": spec.subset, "seed": spec.seed} if spec else {}
    loggers = twin_loggers(folder, folder.name, board.group, job_type, tags, "0", fields)
    return [
        *("--run_name", folder.name, "--group", board.group),
        *("--trainer.logger", loggers),
        *("--trainer.default_root_dir", str(folder)),
        *("--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"),
        "--trainer.callbacks+=nwa.suite.execute.EpochTimer",
        # an unfinished bench run is redone from its start: no last.ckpt after every epoch, and
        # the best one without the optimizer's state (Dense's on a 256 x 2304 layer is 0.9 GB
        # with it, written and synced whenever validation improves)
        *("--checkpoint.save_last", "false", "--checkpoint.save_weights_only", "true"),
    ]


@torch.no_grad()
def collect_outputs(model: Any, dm: Any) -> dict[str, np.ndarray]:
    """Predictions, targets and representations of every model of the run's splits.

    The representation is the encoder's output (the metanetwork's embedding of the weights) where
    the module has one; the boosted trees' is their input, the weight statistics.
    """
    splits = [s for part in ("train", "val", "test") for s in dm.splits[part]]
    loader = dm.loader(splits)
    rows = loader.dataset.rows
    preds, targets = [], []
    zs: list[torch.Tensor] | None = []  # None once a batch has no representation
    was_training = model.training
    model.eval()
    for batch in loader:
        x = model.transfer_batch_to_device(batch["x"], model.device, 0)
        preds.append(model.task.predict(model(x)).float().cpu())
        targets.append(batch["y"].float().cpu())
        if zs is not None:
            z = _representation(model, x)
            if z is None:
                zs = None
            else:
                zs.append(z.float().cpu())
    model.train(was_training)
    out = {
        "pred": torch.cat(preds).numpy(),
        "target": torch.cat(targets).numpy(),
        "split": np.array(_split_names(rows["split"], dm.splits), dtype=str),
        "tree": np.array(rows["tree"].astype(str).tolist(), dtype=str),
    }
    if zs:
        out["z"] = torch.cat(zs).numpy()
    return out


def _representation(model: Any, x: Any) -> torch.Tensor | None:
    """The module's embedding of batch ``x``: its encoder's output, or for a module without one
    (the boosted trees) its feature input; ``None`` when neither applies."""
    encoder = getattr(model, "encoder", None)
    if isinstance(encoder, torch.nn.Module):
        try:
            return encoder(x)
        except (TypeError, RuntimeError):  # e.g. the tree experts: one encoder per tree
            return None
    return x if isinstance(x, torch.Tensor) and x.dim() == 2 else None


def _split_names(splits: Any, groups: dict[str, list[str]]) -> list[str]:
    part = {s: name for name, members in groups.items() for s in members}
    return [part.get(s, s) for s in splits]


def execute(
    spec: RunSpec, folder: Path, keep_checkpoints: bool = False, board: Dashboard | None = None
) -> dict[str, Any]:
    """Train and test ``spec`` (through the same code as ``python -m nwa.fit``) into ``folder``.

    A run that fails is recorded with its error (and its traceback in ``error.txt``), so the
    report shows it and a rerun tries it again.
    """
    from nwa.cli import main
    from nwa.eval.callbacks import evaluation_report
    from nwa.metanets import count_parameters

    if folder.exists():  # an unfinished earlier attempt: start clean
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    result: dict[str, Any] = spec.to_dict() | {"recipes": recipe_digest(spec.args)}
    start = time.perf_counter()
    log = open(folder / "output.txt", "w")  # noqa: SIM115 - closed below, after the run
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            cli = main("fit", [*spec.args, *logger_args(folder, spec, board)])
        fit_s = time.perf_counter() - start
        trainer, model, dm = cli.trainer, cli.model, cli.datamodule
        # the best checkpoint on validation, or the last weights when no validation ran yet
        best = trainer.checkpoint_callback and trainer.checkpoint_callback.best_model_path
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            tested = trainer.test(
                model, datamodule=dm, ckpt_path="best" if best else None, verbose=False
            )
        model = trainer.lightning_module
        outputs = collect_outputs(model, dm) if spec.task != "concept" else {}
        encoder = getattr(model, "encoder", None)
        timer = next(c for c in trainer.callbacks if isinstance(c, EpochTimer))
        n_train = len(dm.dataset("train"))
        per_epoch = timer.seconds / max(timer.epochs, 1)
        result |= {
            "metrics": {k: _number(v) for k, v in (tested[0] if tested else {}).items()},
            "tested": "best" if best else "last",
            "best_val": _number(trainer.checkpoint_callback.best_model_score or float("nan")),
            "params": count_parameters(model),
            "encoder_params": count_parameters(encoder)
            if isinstance(encoder, torch.nn.Module)
            else None,
            "epochs": trainer.current_epoch,
            "n_train": n_train,
            "n_eval": len(outputs.get("pred", [])),
            "fit_s": round(fit_s, 2),
            "wall_s": round(time.perf_counter() - start, 2),
            "train_s_per_epoch": round(per_epoch, 4),
            "train_s_per_epoch_per_1000": round(per_epoch / max(n_train, 1) * 1000, 3),
        }
        if spec.task == "concept":
            report = evaluation_report(trainer)
            result["alignment"] = json.loads(json.dumps(report, default=str))
        if outputs:
            # a file object, since np.savez appends .npz to a temporary name
            with atomic_path(folder / OUTPUTS) as tmp, open(tmp, "wb") as f:
                np.savez_compressed(f, **outputs)
    except (Exception, SystemExit) as e:  # one failing method must not stop the suite
        log.flush()
        said = [
            ln for ln in (folder / "output.txt").read_text().splitlines() if ln.startswith("nwa: ")
        ]
        # nwa's own errors end the CLI with SystemExit after printing their one-line reason
        reason = said[-1] if isinstance(e, SystemExit) and said else f"{type(e).__name__}: {e}"
        result["error"] = reason
        (folder / "error.txt").write_text(traceback.format_exc())
        result["wall_s"] = round(time.perf_counter() - start, 2)
    finally:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            finish_run()
        log.close()
    if not keep_checkpoints:
        for ckpt in folder.rglob("*.ckpt"):
            ckpt.unlink()
    atomic_write_text(folder / RESULT, json.dumps(result, indent=1))
    return result


def quiet() -> None:
    """Silence Lightning's per-run banners and warnings (the suite reports each run itself)."""
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


def _die_with_parent() -> None:
    """Ask Linux to kill this process when its parent dies.

    A bench stopped by SIGTERM (``kill PID``, a scheduler that signals the main process only)
    would otherwise leave its workers training, and holding memory, with no one to collect their
    results. SIGKILL, not SIGTERM: a training run's SIGTERM handlers (Lightning's, nwa.fit's
    Slurm requeue) keep it going, and an unfinished bench run is redone from its start anyway.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before the request was made
        os.kill(os.getpid(), signal.SIGKILL)


def _worker_init(threads: int) -> None:
    _die_with_parent()
    torch.set_num_threads(threads)
    quiet()


def _execute_in_worker(
    spec: RunSpec, folder: Path, keep: bool, board: Dashboard | None
) -> dict[str, Any]:
    try:
        return execute(spec, folder, keep, board)
    finally:
        _release_memory()


def _release_memory() -> None:
    """Give the heap a finished run freed back to the system: glibc keeps it otherwise, and a
    worker that had run PCA and Dense on the 256-wide trees held 9.7 GB between runs."""
    gc.collect()
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)


def run_all(
    specs: Sequence[RunSpec],
    out: Path,
    jobs: int = 1,
    keep_checkpoints: bool = False,
    started: Callable[[RunSpec], None] | None = None,
    finished: Callable[[RunSpec, dict[str, Any]], None] | None = None,
    board: Dashboard | None = None,
) -> list[dict[str, Any]]:
    """Execute ``specs`` into ``out/runs/<key>``, ``jobs`` at a time.

    With ``jobs > 1`` runs go to worker processes (spawned, so they share no torch state), each
    with ``cores // jobs`` torch threads: small metanetworks do not use two cores well, so two
    one-thread runs on a 2-core machine finish sooner than one two-thread run after another.
    """
    results = []
    if jobs <= 1:
        quiet()
        for spec in specs:
            if started:
                started(spec)
            res = execute(spec, out / "runs" / spec.key, keep_checkpoints, board)
            results.append(res)
            if finished:
                finished(spec, res)
        return results
    threads = max(1, cpu_cores() // jobs)
    ctx = multiprocessing.get_context("spawn")
    queue, retries = list(specs), Counter()
    while queue:
        # a worker killed by the system (out of memory) breaks its pool and fails every run the
        # pool held, or was given before the break was seen: each is tried up to twice more in a
        # new pool, then recorded as failed (a later bench call tries it again)
        with ProcessPoolExecutor(
            jobs, mp_context=ctx, initializer=_worker_init, initargs=(threads,)
        ) as pool:
            running: dict[Future, RunSpec] = {}
            broken = False
            while (queue and not broken) or running:
                while queue and not broken and len(running) < jobs:
                    spec = queue[0]
                    try:
                        fut = pool.submit(
                            _execute_in_worker,
                            spec,
                            out / "runs" / spec.key,
                            keep_checkpoints,
                            board,
                        )
                    except BrokenProcessPool:
                        broken = True
                        break
                    queue.pop(0)
                    running[fut] = spec
                    if started:
                        started(spec)
                if not running:
                    break
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in done:
                    spec = running.pop(fut)
                    try:
                        res = fut.result()
                    except Exception as e:  # the worker itself died (out of memory, killed)
                        broken = broken or isinstance(e, BrokenProcessPool)
                        if isinstance(e, BrokenProcessPool) and retries[spec.key] < 2:
                            retries[spec.key] += 1
                            queue.append(spec)
                            continue
                        res = spec.to_dict() | {
                            "error": f"worker died (killed, or out of memory): {type(e).__name__}"
                        }
                    results.append(res)
                    if finished:
                        finished(spec, res)
    return results
