"""torchvision's ResNet-18/50, AlexNet and VGG-16, written out in plain PyTorch (same module
names, so the same state_dict keys), returning their logits and the activations dissectjax
sows. The converter's parity reference (tests/test_convert.py) and the network of the PyTorch
peer (benchmarks/peer_torch.py); torchvision itself is not needed."""

import torch
from torch import nn


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin, width, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.downsample = None
        if stride != 1 or cin != width:
            self.downsample = nn.Sequential(nn.Conv2d(cin, width, 1, stride, bias=False), nn.BatchNorm2d(width))

    def forward(self, x):
        self.inner = {"relu1": torch.relu(self.bn1(self.conv1(x)))}  # the units dissectjax sows in a block
        y = self.bn2(self.conv2(self.inner["relu1"]))
        return torch.relu(y + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, width, stride):
        super().__init__()
        out = width * 4
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.downsample = None
        if stride != 1 or cin != out:
            self.downsample = nn.Sequential(nn.Conv2d(cin, out, 1, stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x):
        self.inner = {"relu1": torch.relu(self.bn1(self.conv1(x)))}
        self.inner["relu2"] = y = torch.relu(self.bn2(self.conv2(self.inner["relu1"])))
        y = self.bn3(self.conv3(y))
        return torch.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet(nn.Module):
    def __init__(self, block, blocks, num_classes):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = 64
        for i, n in enumerate(blocks):
            stage = []
            for j in range(n):
                stage.append(block(cin, 64 * 2**i, 2 if i > 0 and j == 0 else 1))
                cin = 64 * 2**i * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        acts = {"conv1": torch.relu(self.bn1(self.conv1(x)))}
        x = self.maxpool(acts["conv1"])
        for i in range(1, 5):
            stage = getattr(self, f"layer{i}")
            x = acts[f"layer{i}"] = stage(x)
            acts.update({f"layer{i}_{j}/{k}": v for j, block in enumerate(stage) for k, v in block.inner.items()})
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)), acts


class Plain(nn.Module):
    """AlexNet or VGG-16: ``features`` and ``classifier`` as torchvision builds them."""

    def __init__(self, kind, num_classes):
        super().__init__()
        layers, self.names = [], {}
        if kind == "alexnet":
            spec = [(64, 11, 4, 2), "M", (192, 5, 1, 2), "M", (384, 3, 1, 1), (256, 3, 1, 1), (256, 3, 1, 1), "M"]
            names, pool, pooled = [f"conv{i}" for i in range(1, 6)], 3, 6
        else:
            widths = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
            spec = [w if w == "M" else (w, 3, 1, 1) for w in widths]
            names = [f"conv{s}_{i}" for s, n in enumerate((2, 2, 3, 3, 3), 1) for i in range(1, n + 1)]
            pool, pooled = 2, 7
        cin, k = 3, 0
        for item in spec:
            if item == "M":
                layers.append(nn.MaxPool2d(pool, 2))
            else:
                out, kernel, stride, pad = item
                layers += [nn.Conv2d(cin, out, kernel, stride, pad), nn.ReLU(inplace=False)]
                self.names[len(layers) - 1] = names[k]  # the ReLU's output is the sown activation
                cin, k = out, k + 1
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(pooled)
        flat = cin * pooled * pooled
        if kind == "alexnet":
            self.classifier = nn.Sequential(nn.Dropout(), nn.Linear(flat, 4096), nn.ReLU(), nn.Dropout(),
                                            nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, num_classes))  # fmt: skip
        else:
            self.classifier = nn.Sequential(nn.Linear(flat, 4096), nn.ReLU(), nn.Dropout(), nn.Linear(4096, 4096),
                                            nn.ReLU(), nn.Dropout(), nn.Linear(4096, num_classes))  # fmt: skip

    def forward(self, x):
        acts = {}
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.names:
                acts[self.names[i]] = x
        x = torch.flatten(self.avgpool(x), 1)
        for layer in self.classifier:
            x = layer(x)
            if isinstance(layer, nn.ReLU):
                acts["fc6" if "fc6" not in acts else "fc7"] = x
        return x, acts


def build(arch, num_classes):
    if arch == "resnet18":
        return ResNet(BasicBlock, (2, 2, 2, 2), num_classes)
    if arch == "resnet50":
        return ResNet(Bottleneck, (3, 4, 6, 3), num_classes)
    return Plain(arch, num_classes)


def calibrate_batchnorm(model, inputs, seed=0):
    """Running statistics measured on ``inputs`` (as after training: BatchNorm outputs keep their
    scale through the network), then perturbed, with random affine parameters, so that every
    BatchNorm term is exercised."""
    g = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    # a residual branch's last BatchNorm starts small in trained ResNets (the stream stays O(1))
    last = {
        id(b.bn3 if isinstance(b, Bottleneck) else b.bn2)
        for b in model.modules()
        if isinstance(b, BasicBlock | Bottleneck)
    }
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the calibration batch
        low, spread = (0.1, 0.2) if id(m) in last else (0.5, 0.5)
        m.weight.data.copy_(torch.rand(m.num_features, generator=g) * spread + low)
        m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    model.train()
    with torch.no_grad():
        model(inputs)
    for m in norms:
        m.running_mean.add_(torch.randn(m.num_features, generator=g) * 0.05)
        m.running_var.mul_(torch.rand(m.num_features, generator=g) * 0.4 + 0.8)
    return model.eval()
