"""rkd.metrics against hand computations and scikit-learn."""
import math

import pytest
import torch

from rkd import metrics

sklearn_metrics = pytest.importorskip("sklearn.metrics")


def _logits(seed, n=200, c=5):
    return torch.randn(n, c, generator=torch.Generator().manual_seed(seed)) * 2


def _onehot_logits(classes, c):
    return torch.nn.functional.one_hot(torch.tensor(classes), c).float() * 10


def test_agreement_and_accuracy_by_hand():
    s, t = _onehot_logits([0, 1, 2, 2], 3), _onehot_logits([0, 2, 2, 1], 3)
    assert metrics.top1_agreement(s, t) == 0.5
    assert metrics.accuracy(s, torch.tensor([0, 1, 0, 0])) == 0.5


def test_kl_both_directions_by_hand():
    s = torch.log(torch.tensor([[0.5, 0.5], [0.9, 0.1]], dtype=torch.float64))
    t = torch.log(torch.tensor([[0.25, 0.75], [0.5, 0.5]], dtype=torch.float64))
    kl_ts = ((0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5))
             + (0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1))) / 2
    kl_st = ((0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75))
             + (0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5))) / 2
    assert metrics.kl_teacher_student(s, t).item() == pytest.approx(kl_ts, rel=1e-12)
    assert metrics.kl_student_teacher(s, t).item() == pytest.approx(kl_st, rel=1e-12)
    assert kl_ts != pytest.approx(kl_st)
    torch.testing.assert_close(metrics.kl_teacher_student(s, t, temperature=3.0),
                               metrics.kl_divergence(t / 3, s / 3))


def test_mutual_information_matches_sklearn():
    s, t = _logits(0), _logits(1)
    t[:120] = s[:120] + 0.1 * t[:120]            # make the predictions depend on each other
    ps, pt = s.argmax(1).numpy(), t.argmax(1).numpy()
    table = metrics.contingency_table(s, t)
    assert table.sum() == 200 and torch.equal(table.diagonal().sum(), (s.argmax(1) == t.argmax(1)).sum())
    mi = metrics.mutual_information(table).item()
    assert mi == pytest.approx(sklearn_metrics.mutual_info_score(ps, pt), rel=1e-10)
    assert metrics.normalized_mutual_information(table).item() == pytest.approx(
        sklearn_metrics.normalized_mutual_info_score(ps, pt), rel=1e-10)
    # tables add up over batches: the whole-set MI is the MI of the summed table
    halves = metrics.contingency_table(s[:77], t[:77]) + metrics.contingency_table(s[77:], t[77:])
    assert torch.equal(halves, table)
    # the paper's per-batch estimate is sklearn's score on one batch
    assert metrics.paper_batch_mi(s[:32], t[:32]).item() == pytest.approx(
        sklearn_metrics.mutual_info_score(ps[:32], pt[:32]), rel=1e-10)


def test_mutual_information_extremes():
    same = _onehot_logits([0, 1, 2, 0, 1, 2], 3)
    table = metrics.contingency_table(same, same)
    assert metrics.mutual_information(table).item() == pytest.approx(math.log(3))
    assert metrics.normalized_mutual_information(table).item() == pytest.approx(1.0)
    constant = _onehot_logits([1] * 6, 3)
    assert metrics.mutual_information(metrics.contingency_table(same, constant)) == 0
    assert metrics.normalized_mutual_information(metrics.contingency_table(constant, constant)) == 1.0


def test_ece_by_hand():
    # confidences 0.9, 0.9 (bin 14), 0.6 (bin 9), 0.6 (bin 9); correct: yes, no, yes, yes
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    logits, labels = probs.log(), torch.tensor([0, 1, 0, 1])
    weighted = (2 / 4) * abs(0.5 - 0.9) + (2 / 4) * abs(1.0 - 0.6)
    unweighted = (abs(0.5 - 0.9) + abs(1.0 - 0.6)) / 2
    assert metrics.expected_calibration_error(logits, labels).item() == pytest.approx(weighted)
    assert metrics.paper_ece(logits, labels).item() == pytest.approx(unweighted)
    skewed = torch.tensor([[0.9, 0.1]] * 3 + [[0.6, 0.4]]).log()
    assert metrics.expected_calibration_error(skewed, torch.tensor([0, 0, 0, 1])).item() == pytest.approx(
        0.75 * 0.1 + 0.25 * 0.6)
    assert metrics.paper_ece(skewed, torch.tensor([0, 0, 0, 1])).item() == pytest.approx((0.1 + 0.6) / 2)


def test_entropy_and_affinity_by_hand():
    uniform, certain = torch.zeros(3, 4), _onehot_logits([0, 1, 2], 4) * 10
    assert metrics.predictive_entropy(uniform).item() == pytest.approx(math.log(4))
    assert metrics.predictive_entropy(certain).item() == pytest.approx(0.0, abs=1e-12)
    labels = torch.tensor([0, 1, 2, 3])
    clean, augmented = _onehot_logits([0, 1, 2, 0], 4), _onehot_logits([0, 1, 0, 0], 4)
    assert metrics.affinity(augmented, clean, labels).item() == pytest.approx((2 / 4) / (3 / 4))
    with pytest.raises(ValueError, match="no clean image right"):
        metrics.affinity(augmented, _onehot_logits([1, 0, 0, 0], 4), labels)


def test_bad_input_is_rejected_clearly():
    with pytest.raises(ValueError, match="differ in shape"):
        metrics.top1_agreement(torch.zeros(4, 3), torch.zeros(4, 5))
    with pytest.raises(ValueError, match=r"\(N samples, C classes\)"):
        metrics.predictive_entropy(torch.zeros(4))
    with pytest.raises(ValueError, match="LongTensor of shape"):
        metrics.expected_calibration_error(torch.zeros(4, 3), torch.zeros(4))
    with pytest.raises(ValueError, match="positive total"):
        metrics.mutual_information(torch.zeros(3, 3, dtype=torch.long))
