"""rkd.measure.cam: CAM by hand, CAM vs Grad-CAM on a GAP + linear timm model, a head without a linear layer."""
import pytest
import torch
import torch.nn as nn

from rkd.measure.cam import class_activation_maps, grad_cam, linear_head_weight

timm = pytest.importorskip("timm")


def _min_max(maps):
    low = maps.amin((-2, -1), keepdim=True)
    return (maps - low) / (maps.amax((-2, -1), keepdim=True) - low)


@pytest.fixture(scope="module")
def model_and_images():
    torch.manual_seed(0)
    model = timm.create_model("resnet10t", num_classes=10, pretrained=False).eval().double()
    return model, torch.randn(4, 3, 64, 64, dtype=torch.float64)  # float64: the two paths differ only by rounding


def test_cam_matches_a_hand_computation():
    g = torch.Generator().manual_seed(1)
    features, weight = torch.randn(3, 5, 4, 6, generator=g), torch.randn(7, 5, generator=g)
    classes = torch.tensor([0, 6, 3])
    by_hand = torch.stack([sum(weight[c, k] * features[b, k] for k in range(5)) for b, c in enumerate(classes)])
    torch.testing.assert_close(class_activation_maps(features, weight, classes), by_hand)
    agnostic = sum(sum(weight[c, k] * features[:, k] for k in range(5)) for c in range(7))
    torch.testing.assert_close(class_activation_maps(features, weight), agnostic, rtol=1e-5, atol=1e-5)


def test_cam_and_grad_cam_agree_on_gap_linear_model(model_and_images):
    model, images = model_and_images
    with torch.no_grad():
        features = model.forward_features(images)
        predicted = model.forward_head(features).argmax(1)
    weight = linear_head_weight(model)
    for classes in (None, predicted, torch.tensor([1, 2, 3, 9])):
        cam = class_activation_maps(features, weight, classes)
        raw = grad_cam(model, images, classes, relu=False)
        torch.testing.assert_close(_min_max(raw), _min_max(cam), rtol=0, atol=1e-10)
        h, w = features.shape[-2:]
        torch.testing.assert_close(raw * (h * w), cam, rtol=1e-9, atol=1e-9)     # Grad-CAM = CAM / (h w)
        torch.testing.assert_close(grad_cam(model, images, classes) * (h * w), cam.clamp_min(0), rtol=1e-9,
                                   atol=1e-9)
    assert all(p.grad is None for p in model.parameters())


class _AttentionPoolHead(nn.Module):
    """A head that is not GAP + linear: softmax-attention pooling then a linear layer."""

    def __init__(self, channels, classes):
        super().__init__()
        self.score = nn.Conv2d(channels, 1, 1)
        self.fc = nn.Linear(channels, classes)

    def forward_features(self, x):
        return x

    def forward_head(self, features):
        attention = self.score(features).flatten(2).softmax(-1)           # (B, 1, hw)
        return self.fc((features.flatten(2) * attention).sum(-1))

    def get_classifier(self):
        return self.score


def test_grad_cam_works_without_a_linear_head():
    torch.manual_seed(2)
    model, features = _AttentionPoolHead(6, 4), torch.randn(2, 6, 5, 5)
    with pytest.raises(ValueError, match="grad_cam"):
        linear_head_weight(model)
    classes = torch.tensor([1, 3])
    cam = grad_cam(model, features, classes, relu=False)
    # Grad-CAM by hand: channel weights = spatial mean of d logit / d features
    f = features.clone().requires_grad_(True)
    model.forward_head(f).gather(1, classes[:, None]).sum().backward()
    torch.testing.assert_close(cam, (f.grad.mean((2, 3))[:, :, None, None] * features).sum(1))


def test_bad_input_is_rejected_clearly():
    features, weight = torch.zeros(2, 5, 3, 3), torch.zeros(4, 5)
    with pytest.raises(ValueError, match=r"\(B, K, h, w\)"):
        class_activation_maps(torch.zeros(5, 3, 3), weight)
    with pytest.raises(ValueError, match=r"\(C, K=5\)"):
        class_activation_maps(features, torch.zeros(4, 6))
    with pytest.raises(ValueError, match="one class per image"):
        class_activation_maps(features, weight, torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        class_activation_maps(features, weight, torch.tensor([1, 4]))
