"""The backbones: PreActResNet-18 equals the authors' models/PreResNet.py; every model splits
into features + head."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from l2b.models import create_model, features, head


class AuthorsBlock(nn.Module):
    """yuyinzhou/L2B models/PreResNet.py's PreActBlock, transcribed."""

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False))

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if hasattr(self, "shortcut") else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class AuthorsPreActResNet18(nn.Module):
    """Its PreActResNet(PreActBlock, [2, 2, 2, 2]): no BN or ReLU after layer4."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.in_planes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.layer1 = self._make_layer(64, 1)
        self.layer2 = self._make_layer(128, 2)
        self.layer3 = self._make_layer(256, 2)
        self.layer4 = self._make_layer(512, 2)
        self.linear = nn.Linear(512, num_classes)

    def _make_layer(self, planes, stride):
        layers = []
        for s in (stride, 1):
            layers.append(AuthorsBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x):
        out = self.layer4(self.layer3(self.layer2(self.layer1(self.conv1(x)))))
        out = F.avg_pool2d(out, 4)
        return self.linear(out.view(out.size(0), -1))


@pytest.mark.parametrize("classes, count", [(10, 11_171_146), (100, 11_217_316)])
def test_preact_resnet18_has_the_authors_parameters(classes, count):
    ours = create_model("preact-resnet18", num_classes=classes)
    theirs = AuthorsPreActResNet18(classes)
    assert sum(p.numel() for p in ours.parameters()) == count
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    assert not any(k.startswith("bn.") for k in ours.state_dict())  # no final BatchNorm


def test_preact_resnet18_computes_the_authors_function():
    torch.manual_seed(0)
    theirs = AuthorsPreActResNet18(10).double()
    ours = create_model("preact-resnet18", num_classes=10).double()
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-12, atol=1e-12)  # train mode (batch stats)
    ours.eval(), theirs.eval()
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name, kw, shape", [
    ("mlp", dict(in_channels=1, image_size=8, width=16), (5, 1, 8, 8)),
    ("small-cnn", dict(in_channels=1, width=8), (5, 1, 28, 28)),
    ("preact-resnet18", dict(width=8), (5, 3, 32, 32)),
])
def test_every_model_is_its_head_on_its_features(name, kw, shape):
    torch.manual_seed(0)
    model = create_model(name, num_classes=7, **kw).double().eval()
    x = torch.randn(*shape, dtype=torch.float64)
    f = features(model, x)
    assert f.shape == (5, head(model).in_features)
    torch.testing.assert_close(head(model)(f), model(x), rtol=0, atol=0)


GUARDED_GRADIENTS = """
import sys, numpy as np, torch
from sklearn.datasets import load_digits
from l2b.models import create_model
torch.set_num_threads(1)
torch.manual_seed(0)
width = int(sys.argv[1])
model = create_model("preact-resnet18", num_classes=10, in_channels=1, image_size=8, width=width)
images, labels = load_digits(return_X_y=True)
# images stored height x width x channel and viewed as NCHW, as the data pipeline's batches are: with
# one channel these strides are channels-last ones, and the convolutions keep that layout
x = torch.tensor(images[:64] / 16.0, dtype=torch.float32).view(64, 8, 8, 1).permute(0, 3, 1, 2)
assert x.stride() == (64, 1, 8, 1)
if sys.argv[2] == "channels-last":  # as --channels-last converts them: the weights too
    model.to(memory_format=torch.channels_last)
y = torch.tensor(labels[:64])
def grads():
    model.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    return [p.grad.clone() for p in model.parameters()]
with_onednn = grads()
with torch.backends.mkldnn.flags(enabled=False):
    reference = grads()
worst = max(((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item() for a, b in zip(with_onednn, reference))
print(f"{worst:.3g}")
"""


@pytest.mark.parametrize("width, layout", [(4, "as loaded"), (8, "as loaded"), (4, "channels-last")])
def test_narrow_strided_shortcuts_get_the_right_weight_gradient_on_the_cpu(width, layout):
    """oneDNN's weight gradient of a strided 1x1 convolution over a channels-last input with
    fewer than 16 channels writes past its workspace (a heap-corruption abort on an AVX2 CPU, a
    silently wrong gradient on others): the model's guard gives those convolutions a
    channels-first input and weight. In a subprocess, so that a fault fails this test, not the test run."""
    import subprocess
    import sys

    from l2b.models.cpu_guard import ChannelsFirstConv2d, at_risk

    model = create_model("preact-resnet18", num_classes=10, in_channels=1, image_size=8, width=width)
    guarded = sorted(n for n, m in model.named_modules() if isinstance(m, ChannelsFirstConv2d))
    assert guarded == sorted(n for n, m in model.named_modules() if at_risk(m))
    assert guarded == (["layer2.0.shortcut.0", "layer3.0.shortcut.0"] if width == 4 else ["layer2.0.shortcut.0"])
    done = subprocess.run([sys.executable, "-c", GUARDED_GRADIENTS, str(width), layout], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(done.stdout) < 1e-4, done.stdout


def test_the_drop_in_names_a_narrow_strided_1x1_convolution_of_ones_own_model_and_its_guard():
    import warnings

    import l2b
    from l2b.models import guard_strided_1x1

    def own_model():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 8, 1, stride=2), nn.Flatten(),
                             nn.Linear(8 * 4 * 4, 3))

    model = own_model()
    with pytest.warns(UserWarning, match=r"strided 1x1 convolution\(s\) '2' have 2-15 input channels.*"
                                         r"model = l2b.models.guard_strided_1x1\(model\)"):
        l2b.L2B(model, torch.optim.SGD(model.parameters(), lr=0.1))
    for model in (guard_strided_1x1(own_model()),
                  create_model("preact-resnet18", num_classes=10, in_channels=1, image_size=8, width=4)):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            l2b.L2B(model, torch.optim.SGD(model.parameters(), lr=0.1))
