"""Models: the feature map + head split reproduces the logits; sizes match the literature."""
import pytest
import torch

from pipelines.errors import ConfigError
from rkd.models import create


@pytest.mark.parametrize("name,size,chans", [("resnet8", 28, 1), ("resnet20", 32, 3), ("resnet8x4", 32, 3),
                                             ("resnet10t", 64, 3), ("test_resnet", 64, 3)])
def test_features_and_head_reproduce_logits(name, size, chans):
    torch.manual_seed(0)
    model = create(name, num_classes=7, image_size=size, in_chans=chans).eval()
    x = torch.randn(3, chans, size, size)
    with torch.no_grad():
        features = model.forward_features(x)
        logits = model(x)
        assert features.ndim == 4 and features.shape[0] == 3
        torch.testing.assert_close(model.forward_head(features), logits)
        pooled = features.mean((2, 3))
        head = model.get_classifier()
        torch.testing.assert_close(head(pooled), logits, rtol=1e-5, atol=1e-5)
    assert logits.shape == (3, 7)


@pytest.mark.parametrize("name,millions", [("resnet20", 0.28), ("resnet56", 0.86), ("resnet110", 1.74),
                                           ("resnet8x4", 1.23), ("resnet32x4", 7.43)])
def test_cifar_resnet_sizes_match_the_literature(name, millions):
    """Parameter counts of CRD's table (CIFAR-100, 1x1-conv shortcuts), within 1%."""
    params = sum(p.numel() for p in create(name, 100, 32).parameters()) / 1e6
    assert params == pytest.approx(millions, rel=0.01)


def test_unknown_architecture_is_a_clear_error():
    with pytest.raises(ConfigError, match="unknown --arch 'resnet9000'"):
        create("resnet9000", 10, 32)
