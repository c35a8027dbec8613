#!/usr/bin/python3
"""PyTorch twin of mfres's CIFAR ResNet, for side-by-side speed measurements.

Same architecture as src/models/resnet.c: 3x3 stem, 3 stages of n blocks
(post-activation: conv-BN-ReLU-conv-BN, add, ReLU; pre-activation:
BN-ReLU-conv-BN-ReLU-conv, add), option-A shortcut (stride-2 subsample, zero
channels on both sides), global average pool, linear. Prints one line:
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


class ResNet(nn.Module):
    def __init__(self, depth, in_c, classes, preact, width=16):
        super().__init__()
        n = (depth - 2) // 6
        self.preact = preact
        self.conv1 = nn.Conv2d(in_c, width, 3, 1, 1, bias=False)
        if not preact:
            self.bn1 = nn.BatchNorm2d(width)
        layers, cin = [], width
        for s in range(3):
            cout = width << s
            blocks = []
            for j in range(n):
                blocks.append(Block(cin, cout, 2 if (s > 0 and j == 0) else 1, preact))
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
    p.add_argument("--block", choices=["postact", "preact"], default="postact")
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
    model = ResNet(a.depth, c, 10, a.block == "preact")
    x = torch.randn(a.batch, c, h, w)
    y = torch.randint(0, 10, (a.batch,))
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
