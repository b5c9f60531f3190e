"""Verdict counts and mean certified share per quick rate table, as the table in figures/README.md shows them.

Run from the repository root after a quick reproduction: `.venv/bin/python figures/verdicts.py`.
"""

from pathlib import Path

import pandas as pd

for path in sorted(Path(__file__).parent.glob("*_quick_rates.csv")):
    rates = pd.read_csv(path, keep_default_na=False)
    no_slope = (rates.verdict == "") & (rates.slope == "")  # a median of 0 at some n: nothing measured
    verdict = rates.verdict.where(rates.verdict != "", rates.predicted_rate).where(~no_slope, "no slope")
    verdict = verdict.where(~verdict.str.startswith("slow"), "slow")
    counts = ", ".join(f"{count} {name}" for name, count in verdict.value_counts().items())
    certified = pd.to_numeric(rates.certified_share, errors="coerce").mean()
    print(f"| {path.name.removesuffix('_quick_rates.csv')} | {counts} | {certified:.2f} |")
