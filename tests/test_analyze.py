"""Attention pooling over batches and `rkd analyze` end to end."""
import json

import math

import pytest
import torch
import torch.nn.functional as F

from kernels import attention_iou, paper_attention_iou
from rkd.measure.attention import AttentionMeter
from rkd.train.checkpoint import model_record, save_checkpoint
from rkd.cli import main
from rkd.models import create


def random_batch(generator, teachers=3, batch=6, channels=4, classes=5):
    features = torch.randn(teachers, batch, channels, 7, 7, generator=generator).relu()
    weights = [torch.randn(classes, channels, generator=generator) for _ in range(teachers)]
    logits = torch.randn(teachers, batch, classes, generator=generator)
    return features, weights, logits, torch.randint(0, classes, (batch,), generator=generator)


def test_meter_pools_batches_like_one_call():
    g = torch.Generator().manual_seed(0)
    features, weights, logits, labels = random_batch(g)
    meter = AttentionMeter(thresholds=(0.3, 0.5), out_size=14, backend="torch")
    meter.update(features[:, :4], weights, logits[:, :4], labels[:4], 28)
    meter.update(features[:, 4:], weights, logits[:, 4:], labels[4:], 28)
    maps = torch.stack([torch.einsum("bkhw,k->bhw", f, w.sum(0)) for f, w in zip(features, weights)])
    whole = attention_iou(maps, 14, (0.3, 0.5), backend="torch")
    summary = meter.summary()
    pairs = [(0, 1), (0, 2), (1, 2)]
    for k, t in enumerate((0.3, 0.5)):
        assert summary[f"iou_tt_pooled@{t:g}"] == pytest.approx(
            sum(whole.pooled[k, i, j].item() for i, j in pairs) / 3, rel=1e-9)
        assert summary[f"iou_tt@{t:g}"] == pytest.approx(
            sum(whole.pairwise[k, :, i, j].mean().item() for i, j in pairs) / 3, rel=1e-9)
        assert summary[f"iou_all_teachers_pooled@{t:g}"] == pytest.approx(whole.all_models_pooled[k].item())
    assert summary["images"] == 6


def test_student_is_not_part_of_the_all_teachers_iou():
    g = torch.Generator().manual_seed(1)
    features, weights, logits, labels = random_batch(g, teachers=2)
    alone, with_student = AttentionMeter(backend="torch"), AttentionMeter(backend="torch")
    alone.update(features, weights, logits, labels, 14)
    student = (torch.randn(6, 4, 7, 7, generator=g), torch.randn(5, 4, generator=g), torch.randn(6, 5, generator=g))
    with_student.update(features, weights, logits, labels, 14, student=student)
    a, b = alone.summary(), with_student.summary()
    assert a["iou_all_teachers_pooled@0.4"] == b["iou_all_teachers_pooled@0.4"]
    assert a["iou_tt@0.4"] == b["iou_tt@0.4"] and "iou_st@0.4" in b and "iou_st@0.4" not in a


def paper_iou_transcribed(maps, size, threshold, models):
    """The paper's IoU of one batch, image by image: bilinear upsampling, (v - min) / (max - min + 1e-8), `> t`,
    then the intersection of the models' masks over their union, both summed over the batch's images."""
    intersection = union = 0
    for b in range(maps.shape[1]):
        masks = []
        for m in models:
            up = F.interpolate(maps[m, b][None, None].float(), size=(size, size), mode="bilinear",
                               align_corners=False)[0, 0]
            masks.append((up - up.min()) / (up.max() - up.min() + 1e-8) > threshold)
        intersection += int(torch.stack(masks).all(0).sum())
        union += int(torch.stack(masks).any(0).sum())
    return intersection / union if union else math.nan


def quantized_maps(seed, models=3, batch=5):
    """Integer-valued CAMs: many pixels land exactly on a threshold after min-max, where `>` and `>=` differ."""
    return torch.randint(0, 4, (models, batch, 7, 7), generator=torch.Generator().manual_seed(seed)).float()


def test_paper_iou_procedure_equals_its_transcription_ties_included():
    maps, thresholds = quantized_maps(0), (0.2, 0.4, 0.5)
    paper = paper_attention_iou(maps, (14, 14), thresholds)
    for k, t in enumerate(thresholds):
        for i, j in ((0, 1), (0, 2), (1, 2)):
            assert paper.pooled[k, i, j].item() == paper_iou_transcribed(maps, 14, t, (i, j))
        assert paper.all_models_pooled[k].item() == paper_iou_transcribed(maps, 14, t, (0, 1, 2))
    rkd_rule = paper_attention_iou(maps, (14, 14), thresholds, strict=False, epsilon=0.0)
    assert not torch.equal(rkd_rule.pooled, paper.pooled)      # ties decide: `>=` keeps them, the paper does not
    constant = torch.ones(2, 3, 7, 7)                            # degenerate maps: 0/0 in the paper's code
    assert math.isnan(paper_attention_iou(constant, (14, 14), (0.4,)).pooled[0, 0, 1].item())


def test_meter_reports_the_papers_batch_weighted_iou():
    maps = quantized_maps(1, models=4, batch=6)                  # 3 teachers and a student (model 3)
    meter = AttentionMeter(thresholds=(0.4,), out_size=14, backend="torch", paper=True)
    batches = (slice(0, 4), slice(4, 6))
    for b in batches:
        meter.update_maps(maps[:3, b], maps[3, b], 28)
    summary = meter.summary()

    def weighted(models):
        return sum(paper_iou_transcribed(maps[:, b], 14, 0.4, models) * (b.stop - b.start) for b in batches) / 6

    assert summary["iou_tt_paper@0.4"] == pytest.approx(sum(weighted(p) for p in ((0, 1), (0, 2), (1, 2))) / 3)
    assert summary["iou_st_paper@0.4"] == pytest.approx(sum(weighted((3, j)) for j in range(3)) / 3)
    assert summary["iou_all_teachers_paper@0.4"] == pytest.approx(weighted((0, 1, 2)))
    assert summary["iou_teachers_student_paper@0.4"] == pytest.approx(weighted((0, 1, 2, 3)))
    assert "iou_tt_paper@0.4" not in AttentionMeter(backend="torch").summary()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    paths = []
    for seed in range(2):
        torch.manual_seed(seed)
        path = root / f"model{seed}.pt"
        save_checkpoint(path, model_record(create("resnet8", 10, 28, 1), "resnet8", 10, 28, 1))
        paths.append(path)
    return paths


def run_analyze(fmnist_dir, out, teachers, student, *extra):
    argv = ["analyze", "--data", str(fmnist_dir), "--out", str(out), "--device", "cpu", "--magnitude", "9",
            "--thresholds", "0.4", "--thresholds", "0.6", *extra]
    for teacher in teachers:
        argv += ["--teachers", str(teacher)]
    main(argv + ["--student", str(student)])
    return json.loads((out / "analysis.json").read_text())


def test_identical_models_agree_perfectly(fmnist_dir, tmp_path, checkpoints):
    same = checkpoints[0]
    results = run_analyze(fmnist_dir, tmp_path, [same, same], same)
    for key in ("iou_tt@0.4", "iou_tt_pooled@0.6", "iou_all_teachers_pooled@0.4", "soft_iou_tt",
                "agreement_st", "agreement_tt"):
        assert results[key] == pytest.approx(1.0), key
    # The teachers run through the ensemble's forward, the student through the plain model: rounding differences of
    # ~1e-7 may flip a pixel that sits exactly at the threshold, so the student-teacher IoU is 1 to within 1e-3.
    assert results["iou_st@0.4"] == pytest.approx(1.0, abs=1e-3)
    assert results["kl_teacher_student"] == pytest.approx(0.0, abs=1e-6)
    assert results["images"] == 128 and results["split"] == "test"
    assert (tmp_path / "attention_grid.png").stat().st_size > 1000
    markdown = (tmp_path / "analysis.md").read_text()
    assert "| iou_tt@0.4 |" in markdown and "rkd's definitions beside the paper's" in markdown
    assert "`mi_st_paper_classif`" in markdown and "`iou_teachers_student_paper@0.4`" in markdown
    for key in ("iou_tt_paper@0.4", "iou_all_teachers_paper@0.6", "agreement_st_paper"):
        assert results[key] == pytest.approx(1.0), key
    assert results["kl_st_paper"] == pytest.approx(0.0, abs=1e-5)


def test_different_models_and_bad_thresholds(fmnist_dir, tmp_path, checkpoints, capsys):
    results = run_analyze(fmnist_dir, tmp_path / "a", checkpoints, checkpoints[1], "--split", "train",
                          "--max-images", "64", "--cam", "predicted")
    assert results["images"] == 64 and results["split"] == "train" and results["cam"] == "predicted"
    assert 0 <= results["iou_tt@0.4"] < 1 and 0 <= results["mi_st"] and 0 <= results["nmi_st"] <= 1
    with pytest.raises(SystemExit) as exit_:
        main(["analyze", "--data", str(fmnist_dir), "--teachers", str(checkpoints[0]), "--thresholds", "1.5"])
    assert exit_.value.code == 2 and "thresholds must lie in [0, 1]" in capsys.readouterr().err


def test_missing_default_teachers_is_a_clear_error(fmnist_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["analyze", "--data", str(fmnist_dir), "--runs-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "default teachers are missing" in err and len(err.strip().splitlines()) == 1
