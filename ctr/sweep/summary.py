"""The summary of a Hydra multirun: one row per job, as CSV, Markdown and a plot.

Each job directory holds Hydra's `.hydra/overrides.yaml`, ctr's `job.json` (status,
wall time, error) and, when training finished, `metrics.json`. The summary reads only
those files, so it can be rebuilt from any existing sweep directory.
"""

import csv
import json
import math
from pathlib import Path
from typing import Dict, List, Optional

import yaml

from ctr.atomic import write_json_atomic

JOB_RECORD = "job.json"
METRICS = "metrics.json"
SUMMARY_STEM = "summary"

# (column, key in metrics.json)
METRIC_COLUMNS = [
    ("test_auc", "test_auc"),
    ("test_log_loss", "test_log_loss"),
    ("val_auc", "val_auc"),
    ("samples_per_s", "train_samples_per_second"),
    ("embedding_bytes", "embedding_bytes"),
    ("seconds_to_first_step", "seconds_to_first_step"),
]


def write_job_record(run_dir: Path, status: str, wall_seconds: float, error: Optional[str] = None) -> None:
    """Records how a job ended; written atomically so a summary never reads half a file."""
    write_json_atomic(run_dir / JOB_RECORD, {"status": status, "wall_seconds": wall_seconds, "error": error})


def _job_dirs(sweep_dir: Path) -> List[Path]:
    dirs = [p.parent.parent for p in sweep_dir.glob("*/.hydra/overrides.yaml")]
    return sorted(dirs, key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name))


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def job_rows(sweep_dir: Path) -> List[Dict[str, object]]:
    """One row per job directory: its overrides, status, wall time and headline metrics."""
    rows = []
    for job_dir in _job_dirs(sweep_dir):
        overrides = yaml.safe_load((job_dir / ".hydra" / "overrides.yaml").read_text()) or []
        record = _read_json(job_dir / JOB_RECORD)
        metrics = _read_json(job_dir / METRICS)
        row: Dict[str, object] = {"job": job_dir.name}
        row.update(dict(o.split("=", 1) for o in overrides if "=" in o and not o.startswith("hydra.")))
        # A job killed before it could write its record never finished.
        row["status"] = record.get("status", "completed" if metrics else "unfinished")
        row["wall_seconds"] = record.get("wall_seconds")
        row.update({column: metrics.get(key) for column, key in METRIC_COLUMNS})
        rows.append(row)
    return rows


def _columns(rows: List[Dict[str, object]]) -> List[str]:
    columns: List[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    return columns


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def _plot(rows: List[Dict[str, object]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    # Label each marker by the overrides that differ between jobs.
    varying = [c for c in _columns(rows) if "." in c and len({str(row.get(c)) for row in rows}) > 1]
    markers = "osD^v<>pPX*h"
    for index, row in enumerate(rows):
        auc, size = row.get("test_auc"), row.get("embedding_bytes")
        if row["status"] != "completed" or auc is None or size is None or math.isnan(float(auc)):
            continue
        label = f"#{row['job']} " + ", ".join(f"{k}={row.get(k)}" for k in varying)
        ax.scatter(float(size) / 2**20, float(auc), s=60, marker=markers[index % len(markers)], label=label)
    failed = sum(row["status"] != "completed" for row in rows)
    ax.set_xlabel("embedding tables (MiB, all ranks)")
    ax.set_ylabel("test AUC")
    ax.set_title(f"sweep of {len(rows)} jobs" + (f", {failed} failed (not plotted)" if failed else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_summary(sweep_dir: Path) -> List[Dict[str, object]]:
    """Writes summary.csv, summary.md and summary.png into `sweep_dir`; returns the rows."""
    rows = job_rows(sweep_dir)
    columns = _columns(rows)
    with open(sweep_dir / f"{SUMMARY_STEM}.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    (sweep_dir / f"{SUMMARY_STEM}.md").write_text("\n".join(lines) + "\n")
    _plot(rows, sweep_dir / f"{SUMMARY_STEM}.png")
    return rows
