"""The sweep's table, plots and a report that says, claim by claim, whether the data supports the paper.

Every verdict carries its uncertainty: a bootstrap interval over seeds for the metric's change from the lowest to
the highest magnitude. rkd's definitions and the paper's are shown side by side, with a line wherever their
trends disagree.
"""
from __future__ import annotations

import csv
import json
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy.stats import bootstrap, permutation_test, rankdata

from .analyze import definition_pairs
from ..train.plots import plot_against_magnitude

METRICS = ("iou_tt@0.4", "iou_tt_pooled@0.4", "iou_st@0.4", "iou_st_pooled@0.4", "soft_iou_tt", "soft_iou_st",
           "iou_all_teachers_pooled@0.4", "iou_tt_paper@0.4", "iou_st_paper@0.4", "iou_all_teachers_paper@0.4",
           "iou_teachers_student_paper@0.4", "agreement_st", "agreement_st_paper", "kl_teacher_student",
           "kl_student_teacher", "kl_st_paper", "mi_st", "nmi_st", "mi_st_paper_score", "mi_st_paper_classif",
           "student_test_acc", "student_train_acc", "gap", "ece_student", "ece_student_paper", "control_test_acc",
           "control_gap")

# (claim, metric, expected direction as magnitude grows)
CLAIMS = (
    ("Teachers attend to more different regions: teacher-teacher attention IoU falls", "iou_tt@0.4", -1),
    ("... by the paper's definition (batch-pooled, `>` after min-max + 1e-8)", "iou_tt_paper@0.4", -1),
    ("Student-teacher attention IoU falls", "iou_st@0.4", -1),
    ("... by the paper's definition", "iou_st_paper@0.4", -1),
    ("Student-teacher fidelity falls: top-1 agreement", "agreement_st", -1),
    ("... by the paper's definition (mean-of-logits ensemble, batch mean)", "agreement_st_paper", -1),
    ("Student-teacher fidelity falls: mutual information", "mi_st", -1),
    ("... by the paper's definition (mutual_info_classif, batch mean)", "mi_st_paper_classif", -1),
    ("The student overfits less: train-test gap falls", "gap", -1),
    ("Augmentation alone: the control student's train-test gap falls", "control_gap", -1),
)
SIGNIFICANCE = 0.05
PERMUTATIONS = 9999  # exact (every pairing) up to 7 points
BOOTSTRAP_RESAMPLES = 9999
CONFIDENCE = 0.95


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
    """Rows per (teacher set, magnitude): mean and std over seeds of every metric, and the seeds' values."""
    groups = defaultdict(list)
    for point in points:
        groups[(point["teachers"], point["magnitude"])].append(point)
    rows = []
    for (teachers, magnitude), members in sorted(groups.items()):
        row = {"teachers": teachers, "magnitude": magnitude, "seeds": len(members), "values": {}}
        for metric in METRICS:
            values = [m[metric] for m in members]
            row[metric] = statistics.fmean(values)
            row[f"{metric}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
            row["values"][metric] = values
        rows.append(row)
    return rows


def change_interval(low: Sequence[float], high: Sequence[float]) -> tuple:
    """(mean(high) - mean(low), lower, upper): a seeded percentile bootstrap interval (95%) over seeds, resampled
    within each magnitude; (change, nan, nan) when either magnitude has fewer than two seeds."""
    change = statistics.fmean(high) - statistics.fmean(low)
    if min(len(low), len(high)) < 2:
        return change, math.nan, math.nan
    if len(set(low)) == 1 and len(set(high)) == 1:
        return change, change, change

    def difference(low_sample, high_sample, axis=-1):
        return np.mean(high_sample, axis=axis) - np.mean(low_sample, axis=axis)

    result = bootstrap((np.asarray(low), np.asarray(high)), difference, n_resamples=BOOTSTRAP_RESAMPLES,
                       confidence_level=CONFIDENCE, method="percentile", vectorized=True, rng=0)
    return change, float(result.confidence_interval.low), float(result.confidence_interval.high)


def verdict(rows: Sequence[dict], metric: str, direction: int) -> tuple:
    """('supported' | 'contradicted' | 'inconclusive', rho, p, low value, high value, (change, lower, upper)) for
    one teacher set's rows.

    Supported: Spearman's rho between magnitude and the per-magnitude mean over seeds has the claimed sign with a
    two-sided permutation p-value below 0.05 (magnitudes are the unit of the test: seeds are repeats of one
    magnitude, not independent points of the trend), and the bootstrap interval over seeds of the change from the
    lowest to the highest magnitude lies wholly on the claimed side of zero (with one seed there is no interval:
    the change's sign alone). Contradicted: the same in the opposite direction. Otherwise (a constant metric
    included) inconclusive.
    """
    rho, p = spearman_test([r["magnitude"] for r in rows], [r[metric] for r in rows])
    low, high = rows[0], rows[-1]
    interval = change_interval(low["values"][metric], high["values"][metric])
    change, lower, upper = interval
    for sign, name in ((direction, "supported"), (-direction, "contradicted")):
        clear = sign * change > 0 if math.isnan(lower) else min(sign * lower, sign * upper) > 0
        if p < SIGNIFICANCE and sign * rho > 0 and clear:
            return name, rho, p, low[metric], high[metric], interval
    return "inconclusive", rho, p, low[metric], high[metric], interval


def _interval_text(interval: tuple) -> str:
    change, lower, upper = interval
    spread = "one seed" if math.isnan(lower) else f"[{lower:+.4f}, {upper:+.4f}]"
    return f"{change:+.4f} {spread}"


def definitions_side_by_side(rows: Sequence[dict], teacher_set: str) -> list:
    """Markdown lines: each metric pair's change lowest -> highest magnitude by rkd's and the paper's definition,
    then one line per pair whose changes have opposite signs."""
    lines = ["| teachers | metric | rkd | change [95% CI] | paper | change [95% CI] | trends |",
             "|---|---|---|---:|---|---:|---|"]
    disagreements = []
    low, high = rows[0], rows[-1]
    for what, ours, theirs in definition_pairs():
        if theirs not in low["values"] or (ours is not None and ours not in low["values"]):
            continue
        paper = change_interval(low["values"][theirs], high["values"][theirs])
        if ours is None:
            lines.append(f"| {teacher_set} | {what} | — | — | `{theirs}` | {_interval_text(paper)} | paper only |")
            continue
        mine = change_interval(low["values"][ours], high["values"][ours])
        agree = np.sign(mine[0]) == np.sign(paper[0])
        lines.append(f"| {teacher_set} | {what} | `{ours}` | {_interval_text(mine)} | `{theirs}` | "
                     f"{_interval_text(paper)} | {'agree' if agree else '**disagree**'} |")
        if not agree:
            disagreements.append(f"- {teacher_set}, {what}: rkd's `{ours}` changes by {mine[0]:+.4f}, the paper's "
                                 f"`{theirs}` by {paper[0]:+.4f} from magnitude {low['magnitude']} to "
                                 f"{high['magnitude']}: the two definitions disagree on the trend.")
    return lines + [""] + (disagreements or [f"- {teacher_set}: every pair's changes have the same sign."])


def write_outputs(points: Sequence[dict], folder: Path, description: str) -> str:
    """sweep.csv, sweep.json, plots/<metric>.png and report.md in `folder`; returns the report text."""
    rows = aggregate(points)
    with open(folder / "sweep.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[key for key in rows[0] if key != "values"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    (folder / "sweep.json").write_text(json.dumps({"points": list(points), "rows": rows}, indent=2) + "\n")
    for metric in METRICS:
        plot_against_magnitude(rows, metric, folder / "plots" / f"{metric.replace('@', '_at_')}.png")
    lines = ["# Augmentation-magnitude sweep", "", description, "",
             "## Claims of the paper, as this run measured them", "",
             "Rule: Spearman's rho between magnitude and the metric's mean over seeds must have the claimed sign "
             f"with a two-sided permutation p-value below {SIGNIFICANCE} (one value per magnitude: with 6 "
             "magnitudes this needs |rho| of about 0.89 or more, with fewer than 5 it can never hold), and the "
             f"{CONFIDENCE:.0%} bootstrap interval over seeds of the change from the lowest to the highest "
             "magnitude (seeds resampled within each magnitude) must lie wholly on the claimed side of zero; "
             "otherwise the claim is *inconclusive* here. With one seed there is no interval: the verdict then "
             "rests on the trend test and the change's sign.", "",
             "| teachers | claim | metric | lowest magnitude | highest magnitude | change [95% CI] | rho | p | "
             "verdict |", "|---|---|---|---:|---:|---:|---:|---:|---|"]
    teacher_sets = sorted({p["teachers"] for p in points})
    for teacher_set in teacher_sets:
        set_rows = [r for r in rows if r["teachers"] == teacher_set]
        for claim, metric, direction in CLAIMS:
            name, rho, p, low, high, interval = verdict(set_rows, metric, direction)
            lines.append(f"| {teacher_set} | {claim} | `{metric}` | {low:.4f} | {high:.4f} | "
                         f"{_interval_text(interval)} | {rho:+.2f} | {p:.3f} | **{name}** |")
    for teacher_set in teacher_sets:
        lowest = next(r for r in rows if r["teachers"] == teacher_set)
        seeds = ", ".join(f"{v:.4f}" for v in lowest["values"]["control_gap"])
        lines += ["", f"Overfitting to start from ({teacher_set}): the control student's train-test gap at magnitude "
                  f"{lowest['magnitude']} is {lowest['control_gap']:.4f} (seeds: {seeds}); the distilled student's "
                  f"is {lowest['gap']:.4f}."]
    lines += ["", "## rkd's definitions beside the paper's", "",
              "Change of each metric from the lowest to the highest magnitude (mean over seeds, with its "
              f"{CONFIDENCE:.0%} bootstrap interval over seeds), by rkd's definition and by the paper's code's; "
              "see the README's section on definitions for how they differ.", ""]
    for teacher_set in teacher_sets:
        lines += definitions_side_by_side([r for r in rows if r["teachers"] == teacher_set], teacher_set) + [""]
    lines += ["## Per magnitude (mean ± std over seeds)", "", _table(rows), "",
              "Attention IoU is measured on augmented training images at each point's magnitude (threshold 0.4, "
              "class-agnostic CAM); agreement, KL and MI on the clean test images (MI in nats, from the student × "
              "ensemble contingency table over those images; the runs' own epoch records use the whole test set). "
              "Plots: `plots/*.png`; every number: `sweep.json`.", ""]
    report = "\n".join(lines)
    (folder / "report.md").write_text(report)
    return report


def _table(rows: Sequence[dict]) -> str:
    shown = ("iou_tt@0.4", "iou_st@0.4", "agreement_st", "mi_st", "kl_teacher_student", "student_test_acc",
             "student_train_acc", "gap", "ece_student", "control_test_acc", "control_gap")
    header = "| teachers | magnitude | " + " | ".join(shown) + " |"
    lines = [header, "|" + "---|" * (len(shown) + 2)]
    for row in rows:
        cells = " | ".join(f"{row[m]:.4f} ± {row[m + '_std']:.4f}" for m in shown)
        lines.append(f"| {row['teachers']} | {row['magnitude']} | {cells} |")
    return "\n".join(lines)
