"""`make bench`: run every benchmark and write bench/results.json and bench/results.md."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent, help="output folder")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to check the harness")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from s3t.experiments.bench import run_all

    run_all(args.out, quick=args.quick, say=lambda line: print(line, flush=True))
    print(f"wrote {args.out / 'results.json'} and {args.out / 'results.md'}")


if __name__ == "__main__":
    main()
