"""`rkd analyze`: teachers' and student's attention agreement and fidelity under an augmentation, on a data split.

Images are taken in a fixed order from the chosen split, cropped as for evaluation, then augmented with the given
policy at the given magnitude (the same per-image augmentation as training). The same images are also passed
clean, for affinity (accuracy augmented / accuracy clean). Every metric is reported by rkd's definition and by the
paper's (`*_paper*` keys), side by side in analysis.md.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch

import kernels
import pipelines

from ..measure import metrics
from ..measure.attention import AttentionMeter, cams
from ..measure.cam import linear_head_weight
from ..train.checkpoint import load_model
from ..config import DataOptions
from ..train.data import DatasetFacts
from ..kd.ensemble import TeacherEnsemble, load_ensemble
from ..measure.fidelity import fidelity_summary
from ..train.plots import plot_attention_grid

GRID_IMAGES = 8


def definition_pairs(thresholds: Sequence[float] = (0.4,)) -> list:
    """(what, rkd's key, the paper's key) for every metric that both define (rkd's key None: the paper's only)."""
    pairs = []
    for t in thresholds:
        tag = f"@{t:g}"
        pairs += [(f"teacher-teacher attention IoU {tag}", f"iou_tt{tag}", f"iou_tt_paper{tag}"),
                  (f"student-teacher attention IoU {tag}", f"iou_st{tag}", f"iou_st_paper{tag}"),
                  (f"all-teachers attention IoU {tag}", f"iou_all_teachers_pooled{tag}",
                   f"iou_all_teachers_paper{tag}"),
                  (f"teachers-plus-student attention IoU {tag}", None, f"iou_teachers_student_paper{tag}")]
    return pairs + [("student-ensemble top-1 agreement", "agreement_st", "agreement_st_paper"),
                    ("KL(student || ensemble) (paper: x10)", "kl_student_teacher", "kl_st_paper"),
                    ("mutual information (paper: mutual_info_score)", "mi_st", "mi_st_paper_score"),
                    ("mutual information (paper: mutual_info_classif)", "mi_st", "mi_st_paper_classif"),
                    ("student ECE", "ece_student", "ece_student_paper")]


@dataclass(frozen=True)
class AnalyzeOptions:
    """What to analyze and how."""

    split: str = "test"
    max_images: int = 2000
    thresholds: tuple = (0.4,)
    cam_mode: str = "agnostic"
    seed: int = 0
    backend: str = "auto"


def analysis_source(data: DataOptions, options: AnalyzeOptions) -> pipelines.Source:
    """The first `max_images` of a fixed permutation (by the seed) of the split, read once."""
    source = pipelines.open_source(data.data, options.split, data.on_bad_file)
    if len(source) > options.max_images:
        order = torch.randperm(len(source), generator=torch.Generator().manual_seed(options.seed))
        source = pipelines.take(source, order[:options.max_images].sort().values)
    return source


def analysis_loader(source: pipelines.Source, data: DataOptions, facts: DatasetFacts, options: AnalyzeOptions,
                    device, augment):
    """A deterministic loader over `source` in the paper's batches of 128 (its batch-pooled IoU depends on them)."""
    return pipelines.build_loader("torch", source, split="test", batch_size=metrics.PAPER_BATCH_SIZE,
                                  image_size=facts.image_size, augment=augment, device=device, seed=options.seed,
                                  num_workers=data.workers)


@torch.no_grad()
def run_models(ensemble: TeacherEnsemble, student: Optional[torch.nn.Module], loader, meter: Optional[AttentionMeter],
               image_size: int) -> tuple:
    """Teacher logits (T, N, C), student logits (N, C) or None, labels; feeds `meter` with every batch's maps."""
    weights = [linear_head_weight(t) for t in ensemble.teachers]
    teacher_logits, student_logits, labels = [], [], []
    for images, targets in loader:
        logits, features = ensemble.forward_with_features(images)
        student_out = None
        if student is not None:
            s_features = student.forward_features(images)
            s_logits = student.forward_head(s_features)
            student_out = (s_features, linear_head_weight(student), s_logits)
            student_logits.append(s_logits.float().cpu())
        if meter is not None:
            meter.update(features, weights, logits, targets, image_size, student=student_out)
        teacher_logits.append(logits.float().cpu())
        labels.append(targets.cpu())
    return (torch.cat(teacher_logits, 1), torch.cat(student_logits) if student_logits else None, torch.cat(labels))


def analyze(data: DataOptions, facts: DatasetFacts, teacher_paths: Sequence[Path], student_path: Optional[Path],
            options: AnalyzeOptions, device: torch.device, out_dir: Path) -> dict:
    """Measure, write analysis.json, analysis.md and attention_grid.png into `out_dir`; returns the results."""
    ensemble, described = load_ensemble(teacher_paths, device, num_classes=facts.num_classes,
                                        in_chans=facts.in_chans, image_size=facts.image_size)
    student = None
    if student_path is not None:
        student, _ = load_model(student_path, device, num_classes=facts.num_classes, in_chans=facts.in_chans,
                                flag="--student")
        student = student.eval().to(memory_format=torch.channels_last)
    meter = AttentionMeter(options.thresholds, facts.image_size, options.cam_mode, options.backend, paper=True)
    source = analysis_source(data, options)
    augmented = run_models(ensemble, student, analysis_loader(source, data, facts, options, device, data.augment),
                           meter, facts.image_size)
    clean = run_models(ensemble, student,
                       analysis_loader(source, data, facts, options, device, pipelines.AugmentSpec()), None,
                       facts.image_size)
    teacher_aug, student_aug, labels = augmented
    results = {"split": options.split, "images": len(labels), "max_images": options.max_images,
               "seed": options.seed, "augment": data.augment.to_dict(),
               "cam": options.cam_mode, "thresholds": list(options.thresholds),
               "teachers": [p for p, _ in described], "student": str(student_path) if student_path else None,
               **meter.summary()}
    for i, (aug_logits, clean_logits) in enumerate(zip(teacher_aug, clean[0])):
        results[f"teacher{i}_acc"] = float(metrics.accuracy(aug_logits, labels))
        results[f"teacher{i}_affinity"] = float(metrics.affinity(aug_logits, clean_logits, labels))
    if student is not None:
        results.update(fidelity_summary(student_aug, teacher_aug, labels, paper=True))
        results["student_affinity"] = float(metrics.affinity(student_aug, clean[1], labels))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "analysis.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    (out_dir / "analysis.md").write_text(markdown_table(results))
    names = [f"teacher{i} ({arch})" for i, (_, arch) in enumerate(described)] + (["student"] if student else [])
    write_grid(ensemble, student, analysis_loader(source, data, facts, options, device, data.augment), source,
               facts, options, names, out_dir / "attention_grid.png")
    return results


def markdown_table(results: dict) -> str:
    """The scalar results as a two-column Markdown table, then rkd's and the paper's definitions side by side."""
    rows = [f"| {key} | {value:.4f} |" for key, value in sorted(results.items()) if isinstance(value, float)]
    augment = results["augment"]
    header = (f"# Attention and fidelity: {results['split']} split, {results['images']} images, "
              f"{augment['policy']} at magnitude {augment['magnitude']}, CAM {results['cam']}\n\n")
    side = [f"| {what} | {_cell(results, ours)} | {_cell(results, theirs)} |"
            for what, ours, theirs in definition_pairs(results["thresholds"]) if theirs in results]
    return (header + "| metric | value |\n|---|---:|\n" + "\n".join(rows) + "\n\n"
            "## rkd's definitions beside the paper's\n\n| metric | rkd | paper |\n|---|---:|---:|\n"
            + "\n".join(side) + "\n")


def _cell(results: dict, key: Optional[str]) -> str:
    return f"{results[key]:.4f} (`{key}`)" if key in results else "—"


@torch.no_grad()
def write_grid(ensemble: TeacherEnsemble, student, loader, source: pipelines.Source, facts: DatasetFacts,
               options: AnalyzeOptions, names: Sequence[str], out: Path) -> Path:
    """The first images of the loader with each model's binarized attention mask at the first threshold; the
    images are shown un-normalized by `source`'s mean and std (the Source fields the loader normalized with)."""
    images, labels = next(iter(loader))
    images, labels = images[:GRID_IMAGES], labels[:GRID_IMAGES]
    models = list(ensemble.teachers) + ([student] if student is not None else [])
    maps = []
    for model in models:
        features = model.forward_features(images)
        maps.append(cams(features, linear_head_weight(model), model.forward_head(features), labels, options.cam_mode))
    normalized = kernels.normalize_min_max(kernels.upsample_bilinear(torch.stack(maps).float(),
                                                                     (facts.image_size, facts.image_size)))
    mean = torch.tensor(source.mean, device=images.device).view(1, -1, 1, 1)
    std = torch.tensor(source.std, device=images.device).view(1, -1, 1, 1)
    return plot_attention_grid(images * std + mean, normalized >= options.thresholds[0], names, out,
                               f"attention masks at threshold {options.thresholds[0]:g} ({options.cam_mode} CAM)")
