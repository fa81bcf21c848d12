"""The sweep's table, plots and a report that says, claim by claim, whether the data supports the paper."""
from __future__ import annotations

import csv
import json
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy.stats import permutation_test, rankdata

from .plots import plot_against_magnitude

METRICS = ("iou_tt@0.4", "iou_tt_pooled_paper@0.4", "iou_st@0.4", "iou_st_pooled_paper@0.4", "soft_iou_tt",
           "soft_iou_st", "iou_all_teachers_pooled@0.4", "agreement_st", "kl_teacher_student", "kl_student_teacher",
           "mi_st", "nmi_st", "student_test_acc", "student_train_acc", "gap", "ece_student",
           "ece_student_paper_unweighted", "control_test_acc", "control_gap")

# (claim, metric, expected direction as magnitude grows)
CLAIMS = (
    ("Teachers attend to more different regions: teacher-teacher attention IoU falls", "iou_tt@0.4", -1),
    ("... and so does the paper's batch-pooled teacher-teacher IoU", "iou_tt_pooled_paper@0.4", -1),
    ("Student-teacher attention IoU falls", "iou_st@0.4", -1),
    ("Student-teacher fidelity falls: top-1 agreement", "agreement_st", -1),
    ("Student-teacher fidelity falls: mutual information", "mi_st", -1),
    ("The student overfits less: train-test gap falls", "gap", -1),
)
SIGNIFICANCE = 0.05
PERMUTATIONS = 9999  # exact (every pairing) up to 7 points


def spearman_test(x: Sequence[float], y: Sequence[float]) -> tuple:
    """(Spearman's rho, two-sided permutation p-value); (nan, nan) when either side is constant.

    Only y's ranks are permuted against x's fixed ranks (scipy's one-sample "pairings"), so all n! orders are
    enumerated, exactly, while n! <= PERMUTATIONS."""
    if len(set(x)) < 2 or len(set(y)) < 2:
        return math.nan, math.nan
    x_ranks = rankdata(x)
    x_centred = x_ranks - x_ranks.mean()

    def correlation(y_ranks: np.ndarray, axis: int = -1) -> np.ndarray:
        y_centred = y_ranks - y_ranks.mean(axis, keepdims=True)
        return (x_centred * y_centred).sum(axis) / np.sqrt((x_centred ** 2).sum() * (y_centred ** 2).sum(axis))

    result = permutation_test((rankdata(y),), correlation, permutation_type="pairings", vectorized=True,
                              n_resamples=PERMUTATIONS, rng=0)
    return float(result.statistic), float(result.pvalue)


def aggregate(points: Sequence[dict]) -> list:
    """Rows per (teacher set, magnitude): mean and std over seeds of every metric."""
    groups = defaultdict(list)
    for point in points:
        groups[(point["teachers"], point["magnitude"])].append(point)
    rows = []
    for (teachers, magnitude), members in sorted(groups.items()):
        row = {"teachers": teachers, "magnitude": magnitude, "seeds": len(members)}
        for metric in METRICS:
            values = [m[metric] for m in members]
            row[metric] = statistics.fmean(values)
            row[f"{metric}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        rows.append(row)
    return rows


def verdict(rows: Sequence[dict], metric: str, direction: int) -> tuple:
    """('supported' | 'contradicted' | 'inconclusive', rho, p, low value, high value) for one teacher set's rows.

    Supported: Spearman's rho between magnitude and the per-magnitude mean over seeds has the claimed sign with a
    two-sided permutation p-value below 0.05 (magnitudes are the unit of the test: seeds are repeats of one
    magnitude, not independent points of the trend), and the mean at the highest magnitude differs from the mean
    at the lowest in the claimed direction by more than the larger of their seed standard deviations.
    Contradicted: the same in the opposite direction. Otherwise (a constant metric included) inconclusive.
    """
    rho, p = spearman_test([r["magnitude"] for r in rows], [r[metric] for r in rows])
    low, high = rows[0], rows[-1]
    change = high[metric] - low[metric]
    noise = max(low[f"{metric}_std"], high[f"{metric}_std"])
    for sign, name in ((direction, "supported"), (-direction, "contradicted")):
        if p < SIGNIFICANCE and sign * rho > 0 and sign * change > noise:
            return name, rho, p, low[metric], high[metric]
    return "inconclusive", rho, p, low[metric], high[metric]


def write_outputs(points: Sequence[dict], folder: Path, description: str) -> str:
    """sweep.csv, sweep.json, plots/<metric>.png and report.md in `folder`; returns the report text."""
    rows = aggregate(points)
    with open(folder / "sweep.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (folder / "sweep.json").write_text(json.dumps({"points": list(points), "rows": rows}, indent=2) + "\n")
    for metric in METRICS:
        plot_against_magnitude(rows, metric, folder / "plots" / f"{metric.replace('@', '_at_')}.png")
    lines = ["# Augmentation-magnitude sweep", "", description, "",
             "## Claims of the paper, as this run measured them", "",
             "Rule: Spearman's rho between magnitude and the metric's mean over seeds must have the claimed sign "
             f"with a two-sided permutation p-value below {SIGNIFICANCE} (one value per magnitude: with 6 "
             "magnitudes this needs |rho| of about 0.89 or more), and the change from the lowest to the highest "
             "magnitude must exceed the seeds' standard deviation; otherwise the claim is *inconclusive* here. "
             "With one seed there is no seed spread: the verdict then rests on the trend test alone.", "",
             "| teachers | claim | metric | lowest magnitude | highest magnitude | rho | p | verdict |",
             "|---|---|---|---:|---:|---:|---:|---|"]
    for teacher_set in sorted({p["teachers"] for p in points}):
        set_rows = [r for r in rows if r["teachers"] == teacher_set]
        for claim, metric, direction in CLAIMS:
            name, rho, p, low, high = verdict(set_rows, metric, direction)
            lines.append(f"| {teacher_set} | {claim} | `{metric}` | {low:.4f} | {high:.4f} | {rho:+.2f} | "
                         f"{p:.3f} | **{name}** |")
    lines += ["", "## Per magnitude (mean ± std over seeds)", "", _table(rows), "",
              "Attention IoU is measured on augmented training images at each point's magnitude (threshold 0.4, "
              "class-agnostic CAM); agreement, KL and MI on the clean test images (MI in nats, from the student × "
              "ensemble contingency table over those images; the runs' own epoch records use the whole test set). "
              "Plots: `plots/*.png`; every number: `sweep.json`.", ""]
    report = "\n".join(lines)
    (folder / "report.md").write_text(report)
    return report


def _table(rows: Sequence[dict]) -> str:
    shown = ("iou_tt@0.4", "iou_st@0.4", "agreement_st", "mi_st", "kl_teacher_student", "student_test_acc", "gap",
             "ece_student", "control_test_acc", "control_gap")
    header = "| teachers | magnitude | " + " | ".join(shown) + " |"
    lines = [header, "|" + "---|" * (len(shown) + 2)]
    for row in rows:
        cells = " | ".join(f"{row[m]:.4f} ± {row[m + '_std']:.4f}" for m in shown)
        lines.append(f"| {row['teachers']} | {row['magnitude']} | {cells} |")
    return "\n".join(lines)
