"""rkd.measure.metrics against hand computations and scikit-learn."""
import math

import numpy as np
import pytest
import torch

from rkd.measure import metrics

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


def test_mutual_information_extremes():
    same = _onehot_logits([0, 1, 2, 0, 1, 2], 3)
    table = metrics.contingency_table(same, same)
    assert metrics.mutual_information(table).item() == pytest.approx(math.log(3))
    assert metrics.normalized_mutual_information(table).item() == pytest.approx(1.0)
    constant = _onehot_logits([1] * 6, 3)
    assert metrics.mutual_information(metrics.contingency_table(same, constant)) == 0
    assert metrics.normalized_mutual_information(metrics.contingency_table(constant, constant)) == 1.0


def test_ece_by_hand():
    # confidences 0.9, 0.9 (bin 13 of 15), 0.6, 0.6 (bin 8); correct: yes, no, yes, yes
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    logits, labels = probs.log(), torch.tensor([0, 1, 0, 1])
    weighted = (2 / 4) * abs(0.5 - 0.9) + (2 / 4) * abs(1.0 - 0.6)
    assert metrics.expected_calibration_error(logits, labels).item() == pytest.approx(weighted)
    skewed = torch.tensor([[0.9, 0.1]] * 3 + [[0.6, 0.4]]).log()
    assert metrics.expected_calibration_error(skewed, torch.tensor([0, 0, 0, 1])).item() == pytest.approx(
        0.75 * 0.1 + 0.25 * 0.6)


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


# The paper's definitions (zisci2/RethinkKD), each checked against a direct transcription of its formula.

def _paper_ece_transcribed(logits, labels, n_bins=10):
    """Loop over bins (m/n, (m+1)/n]; |accuracy - confidence| of each non-empty bin; mean over all n bins."""
    probs = torch.softmax(logits.double(), 1)
    confidence, predicted = probs.max(1)
    gaps = []
    for m in range(n_bins):
        inside = (confidence > m / n_bins) & (confidence <= (m + 1) / n_bins)
        count = int(inside.sum())
        if count == 0:
            gaps.append(0.0)
            continue
        accuracy = int((inside & (predicted == labels)).sum()) / count
        gaps.append(abs(accuracy - float(confidence[inside].sum()) / count))
    return sum(gaps) / n_bins


def test_paper_ece_is_the_mean_over_all_ten_bins():
    logits, labels = _logits(2, n=500, c=4), torch.randint(0, 4, (500,), generator=torch.Generator().manual_seed(3))
    assert metrics.paper_ece(logits, labels).item() == pytest.approx(_paper_ece_transcribed(logits, labels), rel=1e-12)
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])    # two filled bins of ten
    assert metrics.paper_ece(probs.log(), torch.tensor([0, 1, 0, 1])).item() == pytest.approx((0.4 + 0.4) / 10)
    tie = torch.zeros(3, 2)                                   # confidence exactly 0.5: the bin (0.4, 0.5]
    assert _paper_ece_transcribed(tie, torch.tensor([0, 0, 1])) == pytest.approx(abs(2 / 3 - 0.5) / 10)
    assert metrics.paper_ece(tie, torch.tensor([0, 0, 1])).item() == pytest.approx(abs(2 / 3 - 0.5) / 10)


def _pair_with_dependence(seed, n=300, c=10):
    s, t = _logits(seed, n, c), _logits(seed + 1, n, c)
    t[: n // 2] = s[: n // 2] + 0.1 * t[: n // 2]
    return s, t


def test_paper_mi_score_is_the_plug_in_mi_of_one_batch():
    s, t = _pair_with_dependence(4)
    ps, pt = s.argmax(1).numpy(), t.argmax(1).numpy()
    joint = np.zeros((10, 10))
    np.add.at(joint, (pt, ps), 1)
    joint /= joint.sum()
    outer = joint.sum(1, keepdims=True) * joint.sum(0, keepdims=True)
    transcribed = float((joint[joint > 0] * np.log(joint[joint > 0] / outer[joint > 0])).sum())
    assert metrics.paper_mi_score(s, t) == pytest.approx(transcribed, rel=1e-10)
    assert metrics.paper_mi_score(s, t) == pytest.approx(sklearn_metrics.mutual_info_score(pt, ps), rel=1e-12)


def test_paper_mi_classif_treats_the_class_index_as_a_continuous_feature():
    feature_selection = pytest.importorskip("sklearn.feature_selection")
    s, t = _pair_with_dependence(6, n=128)
    ps, pt = s.argmax(1).numpy(), t.argmax(1).numpy()
    transcribed = feature_selection.mutual_info_classif(ps.reshape(-1, 1).astype(float), pt, random_state=0)[0]
    assert metrics.paper_mi_classif(s, t) == pytest.approx(transcribed, rel=1e-12)
    assert metrics.paper_mi_classif(s, t) == metrics.paper_mi_classif(s, t)          # seeded: reproducible
    assert metrics.paper_mi_classif(s, t) != pytest.approx(metrics.paper_mi_score(s, t), rel=0.05)
    unique = _onehot_logits(list(range(5)), 5)            # no teacher class twice: sklearn keeps no sample
    assert metrics.paper_mi_classif(unique, unique) == 0.0


def test_paper_kl_and_batch_mean():
    s, t = _pair_with_dependence(8, n=300)
    p_s, log_p_s, log_p_t = (torch.softmax(s.double(), 1), torch.log_softmax(s.double(), 1),
                             torch.log_softmax(t.double(), 1))
    assert metrics.paper_kl(s, t) == pytest.approx(10 * float((p_s * (log_p_s - log_p_t)).sum() / 300), rel=1e-12)
    batches = [(0, 128), (128, 256), (256, 300)]           # the last batch is short and counts as one batch
    transcribed = sum(metrics.paper_kl(s[a:b], t[a:b]) for a, b in batches) / 3
    assert metrics.paper_batch_mean(metrics.paper_kl, s, t) == pytest.approx(transcribed, rel=1e-12)
    with pytest.raises(ValueError, match="batch_size"):
        metrics.paper_batch_mean(metrics.paper_kl, s, t, batch_size=0)


def test_paper_fidelity_uses_the_mean_of_logits_ensemble():
    from rkd.measure.fidelity import fidelity_summary, paper_ensemble_logits
    teachers = torch.stack([_logits(10, 200), _logits(11, 200)])
    student, labels = _logits(12, 200), torch.randint(0, 5, (200,), generator=torch.Generator().manual_seed(13))
    ensemble = (teachers[0] + teachers[1]) / 2
    assert torch.equal(paper_ensemble_logits(teachers), ensemble)
    ours = fidelity_summary(student, teachers, labels, paper=True)
    first, second = slice(0, 128), slice(128, 200)
    agreement = [float((student[b].argmax(1) == ensemble[b].argmax(1)).double().mean()) for b in (first, second)]
    assert ours["agreement_st_paper"] == pytest.approx(sum(agreement) / 2)
    assert ours["kl_st_paper"] == pytest.approx(
        (metrics.paper_kl(student[first], ensemble[first]) + metrics.paper_kl(student[second], ensemble[second])) / 2)
    mi = [metrics.paper_mi_classif(student[b], ensemble[b]) for b in (first, second)]
    assert ours["mi_st_paper_classif"] == pytest.approx(sum(mi) / 2)
    assert ours["ece_student_paper"] == pytest.approx(_paper_ece_transcribed(student, labels))
    assert "mi_st_paper_score" in ours and "kl_st_paper" not in fidelity_summary(student, teachers, labels)
