"""Summaries across the runs of a Hydra multirun (``neurolab probe -m seed=1,2 sites=layers.0,layers.1``).

:class:`MultirunSummary` is a Hydra callback (``conf/hydra/default.yaml``): when a sweep ends it reads
every job's ``metrics.json`` and the overrides that made it, and writes into the sweep directory

* ``summary.csv`` / ``summary.json``: one row per job (its swept values, then its metrics);
* ``summary_groups.json``: per setting of the swept keys other than ``seed``, the mean and standard
  deviation over seeds of every metric;
* ``summary.png``: the headline metrics against the first swept key (layer, concept, lambda ...), mean ±
  std over seeds;

and, when the sweep logs to W&B, the same table and plot in one more (offline) W&B run.
"""
from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

__all__ = ["MultirunSummary", "summarize_sweep"]

PLOTTED = ("test/acc", "top/acc@1%", "random/acc@1%", "selectivity")


def _job_overrides(job: Path) -> dict[str, str]:
    f = job / ".hydra" / "overrides.yaml"
    if not f.exists():
        return {}
    out = {}
    for o in OmegaConf.load(f):
        k, _, v = str(o).partition("=")
        out[k.lstrip("+~")] = v
    return out


def summarize_sweep(sweep_dir: str | Path, logger_cfg: Any = None) -> dict[str, Path]:
    """Write the summary files of the sweep in ``sweep_dir`` (see the module docstring); returns their paths."""
    sweep_dir = Path(sweep_dir)
    jobs = sorted((p for p in sweep_dir.iterdir() if p.is_dir() and (p / "metrics.json").exists()),
                  key=lambda p: (len(p.name), p.name))
    if not jobs:
        log.warning("multirun summary: no job of %s wrote metrics.json", sweep_dir)
        return {}
    rows = []
    for job in jobs:
        rows.append((job.name, _job_overrides(job), json.loads((job / "metrics.json").read_text())))
    keys = sorted({k for _, o, _ in rows for k in o})
    swept = [k for k in keys if len({o.get(k) for _, o, _ in rows}) > 1]
    metric_names = sorted({k for _, _, m in rows for k in m if not k.startswith("time/")})
    table = [{"job": name, **{k: o.get(k, "") for k in swept}, **{k: m.get(k) for k in metric_names}}
             for name, o, m in rows]
    out: dict[str, Path] = {}
    out["csv"] = sweep_dir / "summary.csv"
    with open(out["csv"], "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["job", *swept, *metric_names])
        w.writeheader()
        w.writerows(table)
    out["json"] = sweep_dir / "summary.json"
    out["json"].write_text(json.dumps({"swept": swept, "jobs": table}, indent=1) + "\n", encoding="utf-8")
    by = [k for k in swept if k != "seed"]
    groups: dict[tuple, list[dict]] = {}
    for r in table:
        groups.setdefault(tuple(r[k] for k in by), []).append(r)
    agg = []
    for g, members in groups.items():
        entry: dict[str, Any] = {**dict(zip(by, g)), "runs": len(members)}
        for k in metric_names:
            vals = [float(r[k]) for r in members if isinstance(r.get(k), (int, float))]
            if vals:
                mean = sum(vals) / len(vals)
                std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
                entry[k] = {"mean": mean, "std": std}
        agg.append(entry)
    out["groups"] = sweep_dir / "summary_groups.json"
    out["groups"].write_text(json.dumps({"by": by, "groups": agg}, indent=1) + "\n", encoding="utf-8")
    out["png"] = _plot(agg, by, sweep_dir / "summary.png")
    _to_wandb(logger_cfg, sweep_dir, ["job", *swept, *metric_names], table, out["png"])
    log.info("multirun summary of %d jobs (swept %s): %s", len(rows), swept or "nothing", out["csv"])
    return out


def _plot(agg: list[dict], by: list[str], path: Path) -> Path:
    from ..viz.plots import _plt

    plt = _plt()
    x_key = by[0] if by else None
    labels = [str(g.get(x_key, "")) if x_key else "all" for g in agg]
    fig, ax = plt.subplots(figsize=(max(4.5, 0.7 * len(agg) + 2), 3.4), dpi=100)
    try:
        for name in PLOTTED:
            pts = [(i, g[name]["mean"], g[name]["std"]) for i, g in enumerate(agg) if name in g]
            if pts:
                xs, ms, ss = zip(*pts)
                ax.errorbar(xs, ms, yerr=ss, marker="o", capsize=3, label=name)
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=30 if len(labels) > 4 else 0, ha="right" if len(labels) > 4 else "center",
                           fontsize=8)
        ax.set_xlabel(", ".join(by) if by else "")
        ax.set_title("mean ± std over seeds", fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, metadata={"Software": None})
    finally:
        plt.close(fig)
    return path


def _to_wandb(logger_cfg: Any, sweep_dir: Path, columns: list[str], table: list[dict], png: Path) -> None:
    target = str((logger_cfg or {}).get("_target_", "")) if logger_cfg is not None else ""
    if "Wandb" not in target:
        return
    from hydra.utils import instantiate

    from ..tracking import Tracker, finish

    try:
        cfg = OmegaConf.to_container(logger_cfg, resolve=False) if OmegaConf.is_config(logger_cfg) else dict(logger_cfg)
        cfg.update(save_dir=str(sweep_dir), name="multirun-summary")
        tracker = Tracker(instantiate(cfg))
        tracker.log_table("summary", columns, [[r.get(c) for c in columns] for r in table])
        tracker.log_image("summary", png)
    except Exception as e:  # tracking must not break the science
        log.warning("could not log the multirun summary to W&B: %s", e)
    finally:
        finish()


class MultirunSummary(Callback):
    """Hydra callback: :func:`summarize_sweep` when a multirun ends."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            summarize_sweep(config.hydra.sweep.dir, config.get("logger"))
        except Exception as e:  # a summary must not turn a finished sweep into a failure
            log.warning("multirun summary failed: %s", e)
