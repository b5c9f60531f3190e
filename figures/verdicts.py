"""Verdict counts and mean certified share per rate table (quick and full), as figures/README.md shows them.

Run from the repository root after a reproduction: `.venv/bin/python figures/verdicts.py`.
"""

from pathlib import Path

import pandas as pd

for path in sorted(Path(__file__).parent.glob("*_rates.csv")):
    rates = pd.read_csv(path, keep_default_na=False)
    no_slope = (rates.verdict == "") & (rates.slope == "")  # a median of 0 at some n: nothing measured
    verdict = rates.verdict.where(rates.verdict != "", rates.predicted_rate).where(~no_slope, "no slope")
    verdict = verdict.where(~verdict.str.startswith("slow"), "slow")
    counts = ", ".join(f"{count} {name}" for name, count in verdict.value_counts().items())
    certified = pd.to_numeric(rates.certified_share, errors="coerce").mean()
    print(f"| {path.name.removesuffix('_rates.csv')} | {counts} | {certified:.2f} |")
