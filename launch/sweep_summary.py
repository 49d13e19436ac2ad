"""Rebuilds a sweep's summary (CSV, Markdown, plot) from its directory.

    python launch/sweep_summary.py multirun/2026-11-21/10-00-00
"""

import argparse
from pathlib import Path

from ctr.sweep.summary import write_summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir", type=Path, help="a Hydra multirun directory")
    args = parser.parse_args()
    if not args.sweep_dir.is_dir():
        parser.error(f"{args.sweep_dir} is not a directory")
    rows = write_summary(args.sweep_dir)
    if not rows:
        parser.error(f"{args.sweep_dir} holds no Hydra job directories (*/.hydra/overrides.yaml)")
    print((args.sweep_dir / "summary.md").read_text())


if __name__ == "__main__":
    main()
