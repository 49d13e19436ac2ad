"""The throughput table and plots, regenerated from the JSON of `benchmarks/throughput.py` runs.

    python benchmarks/throughput_report.py [RUN_OR_SWEEP_DIR ...]

Given directories, it gathers every `throughput.json` under them into
`benchmarks/throughput.json` (replacing it); with none, it renders that file again. It
rewrites the part of `benchmarks/RESULTS.md` between the `throughput:begin` and
`throughput:end` markers and the `benchmarks/throughput_*.png` plots. A multirun of
`benchmarks/throughput.py` calls it on its sweep directory when it ends.
"""

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Dict, List, Sequence

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks.markdown_section import replace_section  # noqa: E402
from ctr.atomic import write_json_atomic  # noqa: E402

STORE = HERE / "throughput.json"
RESULTS = HERE / "RESULTS.md"
AXES = ("model_name", "world_size", "batch_size", "dim", "rows", "sharding_name", "table_precision", "comms_name",
        "dense_precision")


def gather(dirs: Sequence[Path]) -> List[dict]:
    return [json.loads(p.read_text()) for d in dirs for p in sorted(Path(d).rglob("throughput.json"))]


def _spread(values: Sequence[float], fmt: str = "{:,.0f}") -> str:
    return f"{fmt.format(statistics.median(values))} [{fmt.format(min(values))}–{fmt.format(max(values))}]"


def _pct(value) -> str:
    return "–" if value is None else f"{100 * value:.0f} %"


def machine_line(result: dict) -> str:
    m = result["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    allocator = m["allocator"] if isinstance(m["allocator"], str) else " ".join(f"{k}={v}" for k, v in m["allocator"].items())
    gpu = m["gpu"] or "no GPU"
    return f"{m['cpu']}, {m['cores']} cores; {gpu}; {versions}; allocator: {allocator}"


def table(results: List[dict]) -> str:
    lines = [
        "| model | ranks | batch/rank | dim | rows/feature | sharding | tables | comms | dense | threads/rank "
        "| ctr samples/s | per rank | plain samples/s | ctr ÷ plain | step p50 / p90 ms | peak MB/rank "
        "| emb read / written MB/s | dense % of matmul peak | emb % of copy BW |",
        "|" + "---|" * 6 + "---|" * 4 + "---:|" * 9,
    ]
    for r in results:
        p, ctr, plain = r["point"], r["ctr"], r["plain"]
        lines.append(
            f"| {p['model_name']} | {p['world_size']} | {p['batch_size']} | {p['dim']} | {p['rows']:,} | {p['sharding_name']} "
            f"| {p['table_precision']} | {p['comms_name'] if p['world_size'] > 1 else '–'} | {p['dense_precision']} "
            f"| {r['threads_per_rank']} | {_spread(ctr['samples_per_second_per_repetition'])} "
            f"| {ctr['samples_per_second_per_rank']:,.0f} | {_spread(plain['samples_per_second_per_repetition'])} "
            f"| {_spread(r['ratio_to_plain_per_repetition'], '{:.2f}')} "
            f"| {1e3 * ctr['step_seconds']['p50']:.0f} / {1e3 * ctr['step_seconds']['p90']:.0f} "
            f"| {max(ctr['peak_memory_bytes_per_rank']) / 2**20:,.0f} "
            f"| {ctr['embedding_bytes_read_per_second'] / 1e6:,.1f} / {ctr['embedding_bytes_written_per_second'] / 1e6:,.1f} "
            f"| {_pct(r['dense']['fraction_of_matmul_peak'])} | {_pct(r['embedding']['fraction_of_copy_bandwidth'])} |"
        )
    return "\n".join(lines)


def point_label(p: dict) -> str:
    """A short column or row name of a grid point: `DC 2r 1e+05 d16 fp32/fp16/bf16` (model initials,
    ranks, rows per feature, dim, tables/comms/dense precision)."""
    model = "".join(word[0].upper() for word in p["model_name"].split("_"))
    comms = p["comms_name"] if p["world_size"] > 1 else "–"
    return f"{model} {p['world_size']}r {p['rows']:.0e} d{p['dim']} {p['table_precision']}/{comms}/{p['dense_precision']}"


def breakdown_table(results: List[dict]) -> str:
    categories = list(dict.fromkeys(k for r in results for k in r["breakdown_seconds_per_step"]))
    names = [point_label(r["point"]) for r in results]
    lines = ["| ms per step | " + " | ".join(names) + " |", "|---|" + "---:|" * len(results)]
    for c in categories:
        cells = [r["breakdown_seconds_per_step"].get(c) for r in results]
        lines.append(f"| {c} | " + " | ".join("–" if v is None else f"{1e3 * v:.1f}" for v in cells) + " |")
    return "\n".join(lines)


def limits_table(results: List[dict]) -> str:
    lines = ["| point | threads | fp32 matmul GFLOP/s | bf16 matmul GFLOP/s | copy GB/s (read+write) | dense GFLOP/s reached |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in results:
        lim, p = r["limits"], r["point"]
        reached = r["dense"]["flops_per_second"]
        lines.append(
            f"| {point_label(p)} | {lim['threads']} "
            f"| {lim['matmul_flops_per_second']['fp32'] / 1e9:.1f} | {lim['matmul_flops_per_second']['bf16'] / 1e9:.1f} "
            f"| {lim['copy_bytes_per_second'] / 1e9:.1f} | {'–' if reached is None else f'{reached / 1e9:.1f}'} |")
    return "\n".join(lines)


def markdown(results: List[dict]) -> str:
    machines = sorted({machine_line(r) for r in results})
    return "\n\n".join([
        "Machine: " + "; ".join(machines) + ".",
        table(results),
        "Medians over the repetitions, [min–max] beside them; `ctr ÷ plain` is each repetition's ratio.",
        "Step breakdown (torch.profiler, rank 0, host time):",
        breakdown_table(results),
        "The machine's limits, measured in the same run (rank 0's threads):",
        limits_table(results),
    ])


# Legend names of the grid's axes.
SHORT = {"model_name": "model", "world_size": "ranks", "batch_size": "batch", "rows": "rows", "dim": "dim",
         "sharding_name": "sharding", "table_precision": "tables", "comms_name": "comms", "dense_precision": "dense"}


def _value(key: str, value) -> str:
    return f"{value:.0e}" if key == "rows" else str(value)


def plot(results: List[dict], out_dir: Path) -> List[Path]:
    """One PNG per axis (ranks, dim, precision), a panel per model: ctr (solid) and plain (dashed)
    samples/s along the axis, one line per combination of the other axes that vary."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for axis, label in (("world_size", "ranks"), ("dim", "embedding dim"), ("precision", "precision (tables/comms/dense)")):
        hidden = {"model_name", "table_precision", "comms_name", "dense_precision"} if axis == "precision" else {"model_name", axis}
        panels = {}
        for model in sorted({r["point"]["model_name"] for r in results}):
            points = [r for r in results if r["point"]["model_name"] == model]
            varying = [k for k in AXES if k not in hidden and len({str(r["point"][k]) for r in points}) > 1]
            series: Dict[str, List[tuple]] = {}
            for r in points:
                p = r["point"]
                x = f"{p['table_precision']}/{p['comms_name']}/{p['dense_precision']}" if axis == "precision" else p[axis]
                key = ", ".join(f"{SHORT.get(k, k)} {_value(k, p[k])}" for k in varying)
                series.setdefault(key, []).append((x, r["ctr"]["samples_per_second"], r["plain"]["samples_per_second"]))
            trends = {key: line for key, line in series.items() if len(line) > 1}
            if trends:
                panels[model] = trends
        # A model with no line along this axis has no panel; with none at all, every point is shown alone.
        panels = panels or {"all": {"": [(r["point"].get(axis, ""), r["ctr"]["samples_per_second"],
                                           r["plain"]["samples_per_second"]) for r in results]}}
        fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), sharey=True, squeeze=False)
        for ax, (model, trends) in zip(axes[0], panels.items()):
            for key, line_points in trends.items():
                line_points.sort(key=lambda t: str(t[0]) if axis == "precision" else t[0])
                xs = [str(t[0]) for t in line_points] if axis == "precision" else [t[0] for t in line_points]
                (line,) = ax.plot(xs, [t[1] for t in line_points], marker="o", label=f"ctr {key}")
                ax.plot(xs, [t[2] for t in line_points], marker="x", linestyle="--", color=line.get_color(),
                        label=f"plain {key}")
                if axis != "precision":
                    ax.set_xticks(sorted({t[0] for points in trends.values() for t in points}))
            ax.set_title(model)
            ax.set_xlabel(label)
            ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=1)
        axes[0][0].set_ylabel("training samples/s")
        path = out_dir / f"throughput_{axis}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    return written


def report(dirs: Sequence[Path] = (), store: Path = STORE, results_md: Path = RESULTS, plot_dir: Path = HERE) -> str:
    """Gathers `dirs` into `store` (if any given), renders it into `results_md` and plots in `plot_dir`."""
    if dirs:
        write_json_atomic(store, gather(dirs))
    results = sorted(json.loads(store.read_text()), key=lambda r: tuple(str(r["point"][k]) for k in AXES))
    text = markdown(results)
    replace_section(results_md, "throughput", text)
    plot(results, plot_dir)
    return text


class ThroughputReport(Callback):
    """Renders the report when a multirun of `benchmarks/throughput.py` ends."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        print(report([Path(config.hydra.sweep.dir)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dirs", nargs="*", type=Path, help="run or sweep directories holding throughput.json files")
    print(report(parser.parse_args().dirs))


if __name__ == "__main__":
    main()
