"""Command line: write a synthetic cohort, e.g. `python -m mslesion.phantoms --out DIR --sessions 2`."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .anatomy import load_anatomy
from .options import COHORTS, SEQUENCES, PhantomOptions
from .writer import write_cohort


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options mirroring write_cohort."""
    p = argparse.ArgumentParser(prog="python -m mslesion.phantoms", description=__doc__)
    p.add_argument("--out", required=True, type=Path, help="folder for the images (a MONAI Label datastore)")
    p.add_argument("--cohort", default="ms", choices=COHORTS)
    p.add_argument("--subjects", type=int, default=4)
    p.add_argument("--sessions", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--first-subject", type=int, default=1, help="number of the first subject (sub-01)")
    p.add_argument("--labelled", type=float, default=1.0,
                   help="fraction of subjects whose labels go to OUT/labels/final")
    p.add_argument("--truth", type=Path, default=None, help="folder for all labels and lesions.json")
    p.add_argument("--spacing", type=float, nargs=3, default=(1.0, 1.0, 1.0), metavar=("X", "Y", "Z"))
    p.add_argument("--slice-thickness", type=float, default=None, help="thick axial slices, mm")
    p.add_argument("--orientation", default="RAS", help="axis codes of the written arrays, e.g. LPS")
    p.add_argument("--sequences", nargs="+", default=list(SEQUENCES), choices=SEQUENCES)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Write the cohort and say what was written and how long it took."""
    args = parse_args(argv)
    options = PhantomOptions(spacing=tuple(args.spacing), slice_thickness=args.slice_thickness,
                             orientation=args.orientation, sequences=tuple(args.sequences))
    start = time.perf_counter()
    load_anatomy()
    loaded = time.perf_counter()
    paths = write_cohort(args.out, cohort=args.cohort, subjects=args.subjects, sessions=args.sessions,
                         seed=args.seed, labelled=args.labelled, truth_dir=args.truth, options=options,
                         first_subject=args.first_subject)
    elapsed = time.perf_counter() - loaded
    for path in paths:
        print(path)
    n_sessions = len({"_".join(p.name.split("_")[:2]) for p in paths})
    print(f"wrote {len(paths)} images ({n_sessions} sessions, cohort {args.cohort}) to {args.out}"
          + (f", ground truth to {args.truth}" if args.truth else "")
          + f" in {elapsed:.1f} s ({elapsed / max(n_sessions, 1):.1f} s per session, written;"
          + f" anatomy loaded in {loaded - start:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
