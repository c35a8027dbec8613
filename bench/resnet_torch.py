#!/usr/bin/python3
"""PyTorch twin of mfres's networks (src/models/arch.c), for side-by-side speed
measurements: 3x3 stem, 3 stages of n blocks, global average pool, linear.
Basic blocks (--depth 6n+2; post-activation: conv-BN-ReLU-conv-BN, add, ReLU;
pre-activation: BN-ReLU-conv-BN-ReLU-conv, add) with the option-A shortcut;
the pre-activation bottleneck of ResNet-164 (--block bottleneck, depth 9n+2,
1x1 projections); ResNeXt (--resnext CxD, depth 9n+2, grouped 3x3, projection
+ BN; --block postact|preact). Prints one line:
  train_images_per_s=... infer_images_per_s=...
Run with Debian's /usr/bin/python3 (the one that sees python3-torch).
"""
import argparse
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class ShortcutA(nn.Module):
    def __init__(self, planes):
        super().__init__()
        self.pad = planes // 4

    def forward(self, x):
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class Block(nn.Module):
    def __init__(self, cin, cout, stride, preact):
        super().__init__()
        self.preact = preact
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cin if preact else cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = ShortcutA(cout) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x):
        if self.preact:
            out = self.conv1(F.relu(self.bn1(x)))
            out = self.conv2(F.relu(self.bn2(out)))
            return self.shortcut(x) + out
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(self.shortcut(x) + out)


class Bottleneck(nn.Module):
    """1x1 (mid), 3x3 (mid, stride, groups), 1x1 (cout); a 1x1 projection [+ BN] where the shape changes."""

    def __init__(self, cin, mid, cout, stride, groups, preact, proj_bn):
        super().__init__()
        self.preact = preact
        self.conv1 = nn.Conv2d(cin, mid, 1, 1, 0, bias=False)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=groups, bias=False)
        self.conv3 = nn.Conv2d(mid, cout, 1, 1, 0, bias=False)
        self.bn1 = nn.BatchNorm2d(cin if preact else mid)
        self.bn2 = nn.BatchNorm2d(mid)
        self.bn3 = nn.BatchNorm2d(mid if preact else cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            layers = [nn.Conv2d(cin, cout, 1, stride, 0, bias=False)] + ([nn.BatchNorm2d(cout)] if proj_bn else [])
            self.shortcut = nn.Sequential(*layers)

    def forward(self, x):
        if self.preact:
            out = self.conv1(F.relu(self.bn1(x)))
            out = self.conv2(F.relu(self.bn2(out)))
            out = self.conv3(F.relu(self.bn3(out)))
            return self.shortcut(x) + out
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.relu(self.shortcut(x) + self.bn3(self.conv3(out)))


class ResNet(nn.Module):
    def __init__(self, depth, in_c, classes, preact, width=16, bottleneck=False, resnext=None):
        super().__init__()
        chain3 = bottleneck or resnext is not None
        n = (depth - 2) // (9 if chain3 else 6)
        self.preact = preact
        self.conv1 = nn.Conv2d(in_c, width, 3, 1, 1, bias=False)
        if not preact:
            self.bn1 = nn.BatchNorm2d(width)
        layers, cin = [], width
        for s in range(3):
            blocks = []
            for j in range(n):
                stride = 2 if (s > 0 and j == 0) else 1
                if not chain3:
                    cout = width << s
                    blocks.append(Block(cin, cout, stride, preact))
                else:
                    cout = (4 * width) << s
                    mid = (resnext[0] * resnext[1]) << s if resnext else width << s
                    blocks.append(Bottleneck(cin, mid, cout, stride, resnext[0] if resnext else 1, preact,
                                             resnext is not None))
                cin = cout
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        if preact:
            self.bn_final = nn.BatchNorm2d(cin)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        x = self.conv1(x)
        if not self.preact:
            x = F.relu(self.bn1(x))
        x = self.layer3(self.layer2(self.layer1(x)))
        if self.preact:
            x = F.relu(self.bn_final(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--depth", type=int, default=20)
    p.add_argument("--block", choices=["postact", "preact", "bottleneck"], default="postact")
    p.add_argument("--resnext", default=None, help="CxD: ResNeXt of cardinality C and group width D (stem 64)")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--input", default="3x32x32")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--channels-last", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    c, h, w = (int(v) for v in a.input.split("x"))
    resnext = tuple(int(v) for v in a.resnext.split("x")) if a.resnext else None
    model = ResNet(a.depth, c, a.classes, a.block != "postact", 64 if resnext else 16, a.block == "bottleneck",
                   resnext)
    x = torch.randn(a.batch, c, h, w)
    y = torch.randint(0, a.classes, (a.batch,))
    if a.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9, weight_decay=1e-4)
    model.train()
    t = 0.0
    for it in range(a.warmup + a.iters):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        if it >= a.warmup:
            t += time.perf_counter() - t0
    train_ips = a.iters * a.batch / t
    model.eval()
    t = 0.0
    with torch.no_grad():
        for it in range(a.warmup + a.iters):
            t0 = time.perf_counter()
            model(x)
            if it >= a.warmup:
                t += time.perf_counter() - t0
    infer_ips = a.iters * a.batch / t
    print(f"train_images_per_s={train_ips:.1f} infer_images_per_s={infer_ips:.1f}")


if __name__ == "__main__":
    main()
