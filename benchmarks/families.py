"""User-style networks at 64x64 RGB, 10 classes, for the peer-baseline pruning benchmark
(issue 17), and a helper that trains them on the digits as a user would.

The networks are plain torch, written the way the published definitions write them
(torchvision / timm idioms), not the way edgeprune would like them: edgeprune is **not**
imported by the model code. The benchmark gives them to edgeprune exactly as a user does:
``benchmarks.families:FACTORY`` + ``--weights w.pt`` + ``--data data.npz``. Each carries the
quirk issue 17 lists for its family:

* :func:`mobilenetv3_small` - MobileNetV3-Small's block list (torchvision), squeeze-
  excitation (x * hardsigmoid(fc2(relu(fc1(pool(x)))))), hardswish, BatchNorm momentum
  0.01 / eps 1e-3 as torchvision sets it, a 1024-unit hardswish classifier: the network
  that fell from 97.5 % to 74.7 % in the issue;
* :func:`shufflenet_v2` - ShuffleNetV2 x0.5: channel split, concat and channel shuffle;
* :func:`regnet_x` - RegNetX-200MF-like (depths 1/1/4/7, widths 24/56/152/368): grouped 3x3
  convs with a fixed group width of 8 (widths must stay multiples of 8);
* :func:`resnet18` - the standard ResNet-18 (7x7/2 stem + max-pool) taken as is, with a
  10-class head: what a user does who does not rewrite the stem for 64x64;
* :func:`vit_tiny` - ViT-tiny-like: 8x8 patches (64 tokens + a class token), width 192,
  3 heads of 64, 4 pre-norm encoder blocks with ``nn.MultiheadAttention``, GELU MLP x4.

The data are real: scikit-learn's 1,797 digit scans upsampled to 64x64, grey repeated in
three identical planes (edgeprune.models.data.digits_images(64, channels=3)); nothing is
downloaded. Widths are the published ones; depth is the published one except the ViT
(4 blocks instead of 12, so it trains in minutes on two cores).

Usage: python benchmarks/families.py [--models mobilenetv3-small,...] [--out out/families]
       [--epochs N]   (trains what is not cached, prints each model's accuracy)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

REPO = Path(__file__).resolve().parents[1]
INPUT_SHAPE = (1, 3, 64, 64)
NUM_CLASSES = 10


# --------------------------------------------------------------------------- MobileNetV3-Small
def _divisible(v: float, divisor: int = 8) -> int:
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def _bn(c: int, momentum: float = 0.1, eps: float = 1e-5) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=eps, momentum=momentum)


class ConvBNAct(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, k: int, stride: int = 1, groups: int = 1,
                 act: type[nn.Module] | None = nn.ReLU, momentum: float = 0.1, eps: float = 1e-5) -> None:
        layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, k, stride, (k - 1) // 2, groups=groups, bias=False),
                                   _bn(c_out, momentum, eps)]
        if act is not None:
            layers.append(act(inplace=True))
        super().__init__(*layers)


class SqueezeExcitation(nn.Module):
    def __init__(self, c: int, squeeze: int) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(c, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.fc2(F.relu(self.fc1(self.avgpool(x)), inplace=True))
        return x * F.hardsigmoid(s, inplace=True)


class InvertedResidual(nn.Module):
    def __init__(self, c_in: int, k: int, exp: int, c_out: int, se: bool, act: type[nn.Module], stride: int) -> None:
        super().__init__()
        self.use_res = stride == 1 and c_in == c_out
        bn = {"momentum": 0.01, "eps": 1e-3}
        layers: list[nn.Module] = []
        if exp != c_in:
            layers.append(ConvBNAct(c_in, exp, 1, act=act, **bn))
        layers.append(ConvBNAct(exp, exp, k, stride, groups=exp, act=act, **bn))
        if se:
            layers.append(SqueezeExcitation(exp, _divisible(exp // 4)))
        layers.append(ConvBNAct(exp, c_out, 1, act=None, **bn))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.use_res else y


class MobileNetV3Small(nn.Module):
    # kernel, expanded, out, SE, activation, stride (torchvision's mobilenet_v3_small)
    BLOCKS = ((3, 16, 16, True, "RE", 2), (3, 72, 24, False, "RE", 2), (3, 88, 24, False, "RE", 1),
              (5, 96, 40, True, "HS", 2), (5, 240, 40, True, "HS", 1), (5, 240, 40, True, "HS", 1),
              (5, 120, 48, True, "HS", 1), (5, 144, 48, True, "HS", 1), (5, 288, 96, True, "HS", 2),
              (5, 576, 96, True, "HS", 1), (5, 576, 96, True, "HS", 1))
    example_input_shape = INPUT_SHAPE

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        acts = {"RE": nn.ReLU, "HS": nn.Hardswish}
        layers: list[nn.Module] = [ConvBNAct(3, 16, 3, 2, act=nn.Hardswish, momentum=0.01, eps=1e-3)]
        c = 16
        for k, exp, c_out, se, act, stride in self.BLOCKS:
            layers.append(InvertedResidual(c, k, exp, c_out, se, acts[act], stride))
            c = c_out
        layers.append(ConvBNAct(c, 6 * c, 1, act=nn.Hardswish, momentum=0.01, eps=1e-3))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(6 * c, 1024), nn.Hardswish(inplace=True), nn.Dropout(0.2),
                                        nn.Linear(1024, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


# --------------------------------------------------------------------------- ShuffleNetV2
def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).contiguous().view(b, c, h, w)


class ShuffleUnit(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        half = c_out // 2
        if stride > 1:
            self.branch1 = nn.Sequential(nn.Conv2d(c_in, c_in, 3, stride, 1, groups=c_in, bias=False), _bn(c_in),
                                         nn.Conv2d(c_in, half, 1, bias=False), _bn(half), nn.ReLU(inplace=True))
        else:
            self.branch1 = nn.Sequential()
        c2 = c_in if stride > 1 else half
        self.branch2 = nn.Sequential(nn.Conv2d(c2, half, 1, bias=False), _bn(half), nn.ReLU(inplace=True),
                                     nn.Conv2d(half, half, 3, stride, 1, groups=half, bias=False), _bn(half),
                                     nn.Conv2d(half, half, 1, bias=False), _bn(half), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    example_input_shape = INPUT_SHAPE

    def __init__(self, repeats=(4, 8, 4), widths=(24, 48, 96, 192, 1024), num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(3, widths[0], 3, 2, 1, bias=False), _bn(widths[0]), nn.ReLU(inplace=True))
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        c = widths[0]
        stages = []
        for n, w in zip(repeats, widths[1:4]):
            stages.append(nn.Sequential(ShuffleUnit(c, w, 2), *[ShuffleUnit(w, w, 1) for _ in range(n - 1)]))
            c = w
        self.stage2, self.stage3, self.stage4 = stages
        self.conv5 = nn.Sequential(nn.Conv2d(c, widths[4], 1, bias=False), _bn(widths[4]), nn.ReLU(inplace=True))
        self.fc = nn.Linear(widths[4], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage4(self.stage3(self.stage2(self.maxpool(self.conv1(x)))))
        return self.fc(self.conv5(x).mean([2, 3]))


# --------------------------------------------------------------------------- RegNetX
class XBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, group_width: int) -> None:
        super().__init__()
        self.a = ConvBNAct(c_in, c_out, 1)
        self.b = ConvBNAct(c_out, c_out, 3, stride, groups=c_out // group_width)
        self.c = ConvBNAct(c_out, c_out, 1, act=None)
        self.proj = ConvBNAct(c_in, c_out, 1, stride, act=None) if stride != 1 or c_in != c_out else None
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        short = x if self.proj is None else self.proj(x)
        return self.relu(short + self.c(self.b(self.a(x))))


class RegNetX(nn.Module):
    example_input_shape = INPUT_SHAPE

    def __init__(self, depths=(1, 1, 4, 7), widths=(24, 56, 152, 368), group_width: int = 8,
                 num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.stem = ConvBNAct(3, 32, 3, 2)
        c, stages = 32, []
        for d, w in zip(depths, widths):
            stages.append(nn.Sequential(*[XBlock(c if i == 0 else w, w, 2 if i == 0 else 1, group_width)
                                          for i in range(d)]))
            c = w
        self.trunk = nn.Sequential(*stages)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(self.trunk(self.stem(x))), 1))


# --------------------------------------------------------------------------- ResNet-18
class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
                           if stride != 1 or c_in != c_out else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(out + identity)


class ResNet18(nn.Module):
    """torchvision's resnet18 layout: 7x7/2 conv, 3x3/2 max-pool, [2, 2, 2, 2] basic blocks."""

    example_input_shape = INPUT_SHAPE

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        c, stages = 64, []
        for i, w in enumerate((64, 128, 256, 512)):
            stages.append(nn.Sequential(BasicBlock(c, w, 1 if i == 0 else 2), BasicBlock(w, w)))
            c = w
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# --------------------------------------------------------------------------- ViT
class EncoderBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim, eps=1e-6)
        self.self_attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ln_1(x)
        x = x + self.self_attention(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class ViT(nn.Module):
    example_input_shape = INPUT_SHAPE

    def __init__(self, image: int = 64, patch: int = 8, dim: int = 192, depth: int = 4, heads: int = 3,
                 mlp_ratio: int = 4, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.conv_proj = nn.Conv2d(3, dim, patch, patch)
        n = (image // patch) ** 2
        self.class_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embedding = nn.Parameter(torch.empty(1, n + 1, dim).normal_(std=0.02))
        self.layers = nn.Sequential(*[EncoderBlock(dim, heads, mlp_ratio * dim) for _ in range(depth)])
        self.ln = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embedding
        return self.head(self.ln(self.layers(x))[:, 0])


# --------------------------------------------------------------------------- factories
def mobilenetv3_small() -> nn.Module:
    """MobileNetV3-Small (SE, hardswish, BN momentum 0.01) for 3x64x64, 10 classes."""
    return MobileNetV3Small()


def shufflenet_v2() -> nn.Module:
    """ShuffleNetV2 x0.5 (split / concat / shuffle) for 3x64x64, 10 classes."""
    return ShuffleNetV2()


def regnet_x() -> nn.Module:
    """RegNetX-200MF-like (grouped convs, group width 8) for 3x64x64, 10 classes."""
    return RegNetX()


def resnet18() -> nn.Module:
    """The standard ResNet-18 (ImageNet stem kept) with a 10-class head, for 3x64x64."""
    return ResNet18()


def vit_tiny() -> nn.Module:
    """ViT-tiny-like (patch 8, width 192, 3 heads, 4 blocks) for 3x64x64, 10 classes."""
    return ViT()


#: benchmark name -> factory spec, "cnn" / "transformer" (the aims differ), training epochs and peak lr
FAMILIES: dict[str, dict] = {
    "mobilenetv3-small": {"spec": "benchmarks.families:mobilenetv3_small", "kind": "cnn", "epochs": 10, "lr": 3e-3},
    "shufflenet-v2": {"spec": "benchmarks.families:shufflenet_v2", "kind": "cnn", "epochs": 10, "lr": 3e-3},
    "regnet-x": {"spec": "benchmarks.families:regnet_x", "kind": "cnn", "epochs": 8, "lr": 2e-3},
    "resnet18": {"spec": "benchmarks.families:resnet18", "kind": "cnn", "epochs": 5, "lr": 1e-3},
    "vit-tiny": {"spec": "benchmarks.families:vit_tiny", "kind": "transformer", "epochs": 15, "lr": 1e-3},
}


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def write_data(out: Path) -> Path:
    """``out/data.npz``: the 64x64 RGB digits as a user's ``--data`` file (written once)."""
    path = out / "data.npz"
    if not path.exists():
        if str(REPO) not in sys.path:
            sys.path.insert(0, str(REPO))
        from edgeprune.models.data import digits_images, save_npz_data  # the data, not the models

        save_npz_data(digits_images(size=64, channels=3), path)
    return path


def _load_npz(path: Path) -> tuple[torch.Tensor, ...]:
    import numpy as np

    with np.load(path) as z:
        return tuple(torch.from_numpy(z[k]) for k in ("x_train", "y_train", "x_val", "y_val"))


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 256) -> float:
    model.eval()
    hits = sum(int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum()) for i in range(0, len(x), batch))
    return 100.0 * hits / len(x)


@torch.no_grad()
def settle_bn(model: nn.Module, x: torch.Tensor, batch: int = 128) -> None:
    """BatchNorm running statistics as a long training would have left them. A few
    epochs at momentum 0.01 (MobileNetV3's) move them only part of the way from their
    initial mean 0 / var 1, and eval accuracy is then near chance although the weights
    are trained; a user's model, trained for hundreds of epochs, has settled statistics.
    One cumulative pass over the training images, then each layer's own momentum again:
    the quirk (momentum 0.01 during *fine-tuning*) stays for edgeprune to handle."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for i in range(0, len(x), batch):
        model(x[i:i + batch])
    for m, mom in zip(bns, saved):
        m.momentum = mom
    model.eval()


def train_family(name: str, out: Path, epochs: int | None = None, seed: int = 0, log=_log) -> dict:
    """Train ``name`` on ``out/data.npz`` the way a user would (AdamW, one-cycle schedule,
    random shifts of up to 4 pixels - half a real digit pixel; BatchNorm statistics settled
    at the end, :func:`settle_bn`), save the state_dict to
    ``out/NAME/w.pt`` and return ``{spec, weights, data, accuracy, ...}``. A finished run is
    cached in ``out/NAME/train.json`` and reused unless the recipe changed."""
    fam = FAMILIES[name]
    epochs = epochs or fam["epochs"]
    data = write_data(out)
    d = out / name
    d.mkdir(parents=True, exist_ok=True)
    rec_path, weights = d / "train.json", d / "w.pt"
    if rec_path.exists() and weights.exists():
        rec = json.loads(rec_path.read_text())
        if rec.get("epochs") == epochs and rec.get("seed") == seed:
            return rec
    x_tr, y_tr, x_va, y_va = _load_npz(data)
    torch.manual_seed(seed)
    factory = globals()[fam["spec"].split(":")[1]]
    model = factory()
    decay = 0.05 if fam["kind"] == "transformer" else 1e-4
    opt = torch.optim.AdamW(model.parameters(), lr=fam["lr"], weight_decay=decay)
    batch, n = 64, len(x_tr)
    steps = epochs * (n // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, fam["lr"], total_steps=steps, pct_start=0.15)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(n, generator=gen)
        for i in range(n // batch):
            idx = order[i * batch:(i + 1) * batch]
            dx, dy = (int(v) for v in torch.randint(-4, 5, (2,), generator=gen))
            xb = torch.roll(x_tr[idx], shifts=(dy, dx), dims=(2, 3))
            loss = F.cross_entropy(model(xb), y_tr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        log(f"{name}: epoch {epoch + 1}/{epochs}, loss {float(loss):.3f}, {time.perf_counter() - t0:.0f} s")
    settle_bn(model, x_tr)
    acc = accuracy(model, x_va, y_va)
    torch.save(model.state_dict(), weights)
    rec = {"name": name, "spec": fam["spec"], "kind": fam["kind"], "weights": str(weights), "data": str(data),
           "input_shape": list(INPUT_SHAPE), "accuracy": acc, "epochs": epochs, "seed": seed,
           "train_seconds": round(time.perf_counter() - t0, 1),
           "params": sum(p.numel() for p in model.parameters())}
    rec_path.write_text(json.dumps(rec, indent=1))
    log(f"{name}: val accuracy {acc:.2f}% after {epochs} epochs ({rec['train_seconds']:.0f} s)")
    return rec


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(FAMILIES), help=f"comma-separated, of: {', '.join(FAMILIES)}")
    ap.add_argument("--out", type=Path, default=Path("out/families"))
    ap.add_argument("--epochs", type=int, default=None, help="override every family's epochs")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    names = args.models.split(",")
    unknown = [n for n in names if n not in FAMILIES]
    if unknown:
        ap.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(FAMILIES)}")
    for name in names:
        rec = train_family(name, args.out, args.epochs, args.seed)
        print(f"{name}: {rec['accuracy']:.2f}% val accuracy, {rec['params']:,} params, "
              f"{rec['train_seconds']:.0f} s training ({rec['epochs']} epochs); "
              f"--model {rec['spec']} --weights {rec['weights']} --data {rec['data']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
