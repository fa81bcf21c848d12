"""The end of a distillation run: a summary table on the terminal, report.md and plots in the run directory."""
from __future__ import annotations

from typing import Sequence

from .plots import plot_loss_parts, plot_metrics
from .runs import RunDir


def summary_table(rows: Sequence[dict]) -> str:
    """A Markdown table of models: test accuracy, agreement with the ensemble, train-test gap, images/s."""
    def cell(row, key, fmt):
        return fmt.format(row[key]) if row.get(key) is not None else "–"

    lines = ["| model | test acc | agreement w/ ensemble | train-test gap | images/s |",
             "|---|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {row['name']} | {cell(row, 'test_acc', '{:.2%}')} | "
                     f"{cell(row, 'agreement_ensemble', '{:.2%}')} | {cell(row, 'gap', '{:+.2%}')} | "
                     f"{cell(row, 'images_per_s', '{:,.0f}')} |")
    return "\n".join(lines)


def write_summary(run: RunDir, options, teachers: Sequence[dict], records: Sequence[dict],
                  ensemble_acc: float) -> dict:
    """Print and save the final summary of a distillation run; returns it as a dict."""
    final = records[-1]
    student = {"name": f"student ({options.arch})", **{k: final.get(k) for k in
               ("test_acc", "train_acc", "gap", "agreement_ensemble", "images_per_s")}}
    rows = [*teachers, {"name": "teacher ensemble (mean probs)", "test_acc": ensemble_acc}, student]
    table = summary_table(rows)
    plot_metrics(records, ["test_acc", "train_acc", "agreement_ensemble"], run.plots / "accuracy.png",
                       "student accuracy and agreement")
    plot_loss_parts(records, run.plots / "loss.png")
    plot_metrics(records, ["iou_tt@0.4", "iou_st@0.4", "iou_st_pooled@0.4", "soft_iou_st"],
                       run.plots / "attention.png", "attention IoU on the test set (threshold 0.4)")
    plot_metrics(records, ["agreement_ensemble", "nmi_st", "kl_teacher_student", "ece_student"],
                       run.plots / "fidelity.png", "student-teacher fidelity on the test set")
    steps = run.read_metrics("step")
    if steps:
        plot_metrics(steps, ["iou_tt@0.4", "iou_st@0.4", "batch_agreement_st"], run.plots / "online.png",
                     "measured on training batches during distillation", x_key="step")
    augment = options.data.augment
    report = "\n".join([
        f"# Distillation run `{run.path.name}`", "",
        f"- data: `{options.data.data}`, loader `{options.data.loader}`, augmentation `{augment.policy}` "
        f"at magnitude {augment.magnitude} (of {augment.num_magnitude_bins} bins)",
        f"- student `{options.arch}`, {options.optim.epochs} epochs, seed {options.seed}",
        f"- teachers: {', '.join(t['path'] for t in teachers)}", "",
        table, "",
        "Per-epoch metrics (kind `epoch`, with the loss parts `train_loss` = α·`train_ce` + (1−α)·`train_kd`) "
        "and training-batch measurements (kind `step`): `metrics.jsonl`. "
        "Plots: `plots/accuracy.png`, `plots/loss.png`, `plots/attention.png`, `plots/fidelity.png`, "
        "`plots/online.png`.", ""])
    run.write_report(report)
    print("\n" + table + f"\n\nrun directory: {run.path}", flush=True)
    return {"teachers": teachers, "ensemble_acc": ensemble_acc, "student": student, "run": str(run.path)}
