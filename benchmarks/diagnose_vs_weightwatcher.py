"""``python -m nwa.diagnose`` against WeightWatcher 0.7.7 on the same checkpoints.

Run: ``python benchmarks/diagnose_vs_weightwatcher.py [--zoo tiny] [--repeats 2] [--out FILE]``
(needs the ``bench`` extra: ``pip install -e ".[bench]"``).

Checkpoints: timm ``resnet50`` and ``vit_base_patch16_224`` at random init (seed 0), saved as
safetensors, and a few members of a zoo (``--zoo``: a name built on first use, or a folder).
WeightWatcher analyzes each as its users do: the timm module with the file's weights loaded
(``ww.WeightWatcher(model=module).analyze()``), and zoo members as state dicts. nwa runs its
command, ``nwa.diagnose``, on the file. Each analysis runs in its own child process; nwa and
WeightWatcher alternate, ``--repeats`` times per checkpoint.

Printed per checkpoint: layers each analyzed; the share of layers whose alpha agrees within 0.05;
the share whose other metrics (log_norm, log_spectral_norm, stable_rank, alpha_weighted,
num_pl_spikes) agree within 1e-3 relative; wall-clock seconds of the analysis (from opening the
checkpoint to the results, imports excluded; median over repeats) and of the whole process;
peak RSS of each child (its ``VmHWM``); nwa's speed-up and memory ratio.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TIMM_MODELS = ("resnet50", "vit_base_patch16_224")
OTHER = ("log_norm", "log_spectral_norm", "stable_rank", "alpha_weighted")
ALPHA_TOL, REL_TOL = 0.05, 1e-3


# ----- children: one analysis each, timed inside, results as JSON -----
def peak_rss_mb() -> float:
    """This process's peak resident set (``VmHWM``). Unlike ``ru_maxrss`` it counts only the
    process image after ``exec``: a child forked from a parent that imported torch would
    otherwise report the parent's resident set."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_ww(model: Path, arch: str, out: Path) -> None:
    import logging

    import weightwatcher as ww
    from safetensors.torch import load_file

    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    start = time.perf_counter()
    state = load_file(model)
    if arch:
        import timm

        subject = timm.create_model(arch, pretrained=False)
        subject.load_state_dict(state)
        del state
    else:
        subject = state
    details = ww.WeightWatcher(model=subject).analyze()
    seconds = time.perf_counter() - start
    layers = {}
    for row in details.to_dict("records"):
        name = str(row.get("longname") or row["name"])
        layers[name] = {k: _num(row.get(k)) for k in ("alpha", "num_pl_spikes", *OTHER)}
    out.write_text(json.dumps({"seconds": seconds, "layers": layers, "rss": peak_rss_mb()}))


def child_nwa(model: Path, out: Path, threads: int) -> None:
    import csv

    from nwa.diagnose import run

    table = out.with_suffix(".csv")
    start = time.perf_counter()
    run([str(model), "--out", str(table), "--threads", str(threads), "--quiet"])
    seconds = time.perf_counter() - start
    layers = {}
    with open(table) as f:
        for row in csv.DictReader(f):
            if not row["skipped"]:
                name = row["layer"].removesuffix(".weight")
                layers[name] = {k: _num(row[k]) for k in ("alpha", "num_pl_spikes", *OTHER)}
    out.write_text(json.dumps({"seconds": seconds, "layers": layers, "rss": peak_rss_mb()}))


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


# ----- parent -----
def run_child(args: list[str], log: Path) -> tuple[dict[str, Any], float, float]:
    """Run one child; return its JSON, its process wall-clock seconds and its peak RSS (MB)."""
    out = log.with_suffix(".json")
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONWARNINGS="ignore")
    start = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(
            [sys.executable, __file__, *args, "--child_out", str(out)],
            stdout=f,
            stderr=subprocess.STDOUT,
            env=env,
        )
        status = proc.wait()
    wall = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"child {args} failed; see {log}")
    result = json.loads(out.read_text())
    return result, wall, result["rss"]


def prepare(work: Path, zoo: str, members: int) -> list[tuple[str, Path, str]]:
    """The checkpoints: (label, safetensors file, timm arch for WeightWatcher or '')."""
    import torch
    from safetensors.torch import save_file

    checkpoints = []
    for arch in TIMM_MODELS:
        path = work / arch / "model.safetensors"
        if not path.is_file():
            import timm

            torch.manual_seed(0)
            model = timm.create_model(arch, pretrained=False)
            path.parent.mkdir(parents=True, exist_ok=True)
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
        checkpoints.append((f"{arch} (random init)", path, arch))
    from nwa.zoo.cache import ensure_zoo, zoo_path
    from nwa.zoo.manifest import Zoo

    folder = zoo_path(zoo) if Path(zoo).is_dir() else ensure_zoo(zoo, progress=True)
    table = Zoo.open(folder).table
    # full weights only: WeightWatcher reads a LoRA file's factors, nwa its deltas B @ A
    table = table[~table["arch"].str.contains("lora")]
    per_arch = max(1, members // max(1, table["arch"].nunique()))
    picked = table.groupby("arch", group_keys=False).head(per_arch).head(members)
    for row in picked.to_dict("records"):
        checkpoints.append((f"{zoo} {row['id']} ({row['arch']})", folder / row["path"], ""))
    return checkpoints


def compare(nwa: dict[str, dict], ww: dict[str, dict]) -> dict[str, Any]:
    common = sorted(set(nwa) & set(ww))
    alpha_ok = other_ok = 0
    worst_alpha = worst_rel = 0.0
    for name in common:
        a, b = nwa[name], ww[name]
        d_alpha = abs(a["alpha"] - b["alpha"])
        worst_alpha = max(worst_alpha, d_alpha)
        alpha_ok += d_alpha <= ALPHA_TOL
        rel = max(abs(a[k] - b[k]) / max(abs(b[k]), 1e-12) for k in OTHER)
        rel = max(rel, float(a["num_pl_spikes"] != b["num_pl_spikes"]))
        worst_rel = max(worst_rel, rel)
        other_ok += rel <= REL_TOL
    n = max(1, len(common))
    return {
        "nwa_layers": len(nwa),
        "ww_layers": len(ww),
        "common": len(common),
        "only_nwa": sorted(set(nwa) - set(ww)),
        "only_ww": sorted(set(ww) - set(nwa)),
        "alpha_ok": alpha_ok / n,
        "other_ok": other_ok / n,
        "worst_alpha": worst_alpha,
        "worst_rel": worst_rel,
    }


def measure(checkpoints: list, repeats: int, threads: int, logs: Path) -> list[dict[str, Any]]:
    rows = []
    for label, path, arch in checkpoints:
        runs: dict[str, list] = {"nwa": [], "ww": []}
        results: dict[str, dict] = {}
        for r in range(repeats):
            order = ("nwa", "ww") if r % 2 == 0 else ("ww", "nwa")
            for tool in order:
                args = ["--child", tool, "--model", str(path), "--arch", arch]
                args += ["--threads", str(threads)]
                log = logs / f"{path.parent.name}-{path.stem}-{tool}-{r}.log"
                out, wall, rss = run_child(args, log)
                runs[tool].append((out["seconds"], wall, rss))
                results[tool] = out["layers"]
                print(
                    f"  {label} {tool} round {r}: {out['seconds']:.1f} s, {rss:.0f} MB", flush=True
                )
        row = {"checkpoint": label} | compare(results["nwa"], results["ww"])
        for tool in ("nwa", "ww"):
            row[f"{tool}_s"] = statistics.median(x[0] for x in runs[tool])
            row[f"{tool}_wall"] = statistics.median(x[1] for x in runs[tool])
            row[f"{tool}_mb"] = max(x[2] for x in runs[tool])
        rows.append(row)
    return rows


def report(rows: list[dict[str, Any]], header: str) -> str:
    lines = [
        header,
        "",
        "| checkpoint | layers nwa / WW | alpha within 0.05 | others within 1e-3 rel. | worst |d alpha| "
        "| analysis s nwa / WW | speed-up | process s nwa / WW | peak RSS MB nwa / WW | memory ratio |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['checkpoint']} | {r['nwa_layers']} / {r['ww_layers']} | {r['alpha_ok']:.1%} "
            f"| {r['other_ok']:.1%} | {r['worst_alpha']:.2g} | {r['nwa_s']:.2f} / {r['ww_s']:.2f} "
            f"| {r['ww_s'] / r['nwa_s']:.1f}x | {r['nwa_wall']:.1f} / {r['ww_wall']:.1f} "
            f"| {r['nwa_mb']:.0f} / {r['ww_mb']:.0f} | {r['nwa_mb'] / r['ww_mb']:.2f} |"
        )
    total = {k: sum(r[k] for r in rows) for k in ("common", "nwa_s", "ww_s")}
    alpha = sum(r["alpha_ok"] * r["common"] for r in rows) / max(1, total["common"])
    other = sum(r["other_ok"] * r["common"] for r in rows) / max(1, total["common"])
    lines += [
        "",
        f"All checkpoints: {total['common']} layers compared; alpha within {ALPHA_TOL} on "
        f"{alpha:.1%}, other metrics within {REL_TOL:g} relative on {other:.1%}; analysis time "
        f"nwa {total['nwa_s']:.1f} s, WeightWatcher {total['ww_s']:.1f} s "
        f"({total['ww_s'] / total['nwa_s']:.1f}x).",
    ]
    for r in rows:
        if r["only_nwa"] or r["only_ww"]:
            lines.append(
                f"- {r['checkpoint']}: only nwa {r['only_nwa'][:5]}, only WW {r['only_ww'][:5]}"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", default="/tmp/nwa-bench-diagnose", help="checkpoints and logs")
    p.add_argument("--zoo", default="tiny", help="zoo name (built on first use) or folder")
    p.add_argument("--members", type=int, default=2, help="zoo members (spread over archs)")
    p.add_argument("--repeats", type=int, default=2, help="runs of each tool per checkpoint")
    p.add_argument("--threads", type=int, default=2, help="nwa's worker threads")
    p.add_argument("--only", nargs="*", help="substrings of checkpoint labels to run")
    p.add_argument("--out", help="also write the table (Markdown) here")
    p.add_argument("--child", choices=("nwa", "ww"), help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--arch", default="", help=argparse.SUPPRESS)
    p.add_argument("--child_out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child == "ww":
        return child_ww(Path(args.model), args.arch, Path(args.child_out))
    if args.child == "nwa":
        return child_nwa(Path(args.model), Path(args.child_out), args.threads)
    work = Path(args.workdir)
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    checkpoints = prepare(work, args.zoo, args.members)
    if args.only:
        checkpoints = [c for c in checkpoints if any(s in c[0] for s in args.only)]
    rows = measure(checkpoints, args.repeats, args.threads, logs)
    import torch
    import weightwatcher

    header = (
        f"nwa.diagnose vs WeightWatcher {weightwatcher.__version__}, "
        f"{datetime.date.today()}, {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), "
        f"torch {torch.__version__}, {args.repeats} alternating runs each (median time, max RSS)"
    )
    text = report(rows, header)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
