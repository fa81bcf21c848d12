"""The ensemble KD loss against a hand computation of the paper's formula."""
import math

import pytest
import torch

from rkd.kd.losses import ensemble_kd_loss


def hand_kd(student, teachers, labels, alpha, T, mode):
    """Loops over samples and classes: α·CE + (1−α)·T²·KL(p_t ‖ p_s)."""
    B, C = student.shape

    def softmax(row, t):
        exps = [math.exp(v / t) for v in row]
        total = sum(exps)
        return [e / total for e in exps]

    ce = sum(-math.log(softmax(student[b].tolist(), 1.0)[labels[b]]) for b in range(B)) / B

    def kl(p, q):
        return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q))

    if mode == "per-teacher":
        kls = [sum(kl(softmax(t[b].tolist(), T), softmax(student[b].tolist(), T)) for b in range(B)) / B
               for t in teachers]
        return sum(alpha * ce + (1 - alpha) * T * T * k for k in kls) / len(kls)
    total = 0.0
    for b in range(B):
        probs = [softmax(t[b].tolist(), T) for t in teachers]
        mean = [sum(p[c] for p in probs) / len(probs) for c in range(C)]
        total += kl(mean, softmax(student[b].tolist(), T))
    return alpha * ce + (1 - alpha) * T * T * total / B


@pytest.mark.parametrize("mode", ["per-teacher", "mean-probs"])
@pytest.mark.parametrize("alpha,T", [(0.6, 3.0), (0.0, 1.0), (1.0, 4.0)])
def test_kd_loss_matches_hand_computation(mode, alpha, T):
    g = torch.Generator().manual_seed(1)
    student = torch.randn(5, 4, generator=g, dtype=torch.float64) * 3
    teachers = torch.randn(3, 5, 4, generator=g, dtype=torch.float64) * 3
    labels = torch.randint(0, 4, (5,), generator=g)
    ours = ensemble_kd_loss(student, teachers, labels, alpha=alpha, temperature=T, mode=mode).item()
    assert ours == pytest.approx(hand_kd(student, teachers, labels.tolist(), alpha, T, mode), rel=1e-5)


def test_modes_agree_for_a_single_teacher_and_differ_for_several():
    g = torch.Generator().manual_seed(2)
    student, labels = torch.randn(6, 5, generator=g), torch.randint(0, 5, (6,), generator=g)
    one = torch.randn(1, 6, 5, generator=g)
    a = ensemble_kd_loss(student, one, labels, mode="per-teacher")
    b = ensemble_kd_loss(student, one, labels, mode="mean-probs")
    assert a.item() == pytest.approx(b.item(), rel=1e-5)
    several = torch.randn(3, 6, 5, generator=g) * 4
    assert ensemble_kd_loss(student, several, labels, mode="per-teacher").item() != pytest.approx(
        ensemble_kd_loss(student, several, labels, mode="mean-probs").item(), rel=1e-3)


def test_logit_mse_mode():
    student = torch.tensor([[1.0, 2.0], [0.0, -1.0]])
    teachers = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[3.0, 2.0], [2.0, -1.0]]])
    labels = torch.tensor([1, 0])
    ce = torch.nn.functional.cross_entropy(student, labels).item()
    # squared differences: teacher 0 -> 0, 4, 0, 4; teacher 1 -> 4, 0, 4, 0: mean 2
    loss = ensemble_kd_loss(student, teachers, labels, alpha=0.25, mode="logit-mse").item()
    assert loss == pytest.approx(0.25 * ce + 0.75 * 2.0)


def test_gradient_flows_to_student_only():
    student = torch.randn(4, 3, requires_grad=True)
    teachers = torch.randn(2, 4, 3)
    ensemble_kd_loss(student, teachers, torch.tensor([0, 1, 2, 0])).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="unknown KD mode"):
        ensemble_kd_loss(torch.zeros(1, 2), torch.zeros(1, 1, 2), torch.zeros(1, dtype=torch.long), mode="x")
