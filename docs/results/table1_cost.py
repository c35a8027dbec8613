#!/usr/bin/env python3
"""Cost of the full Table 1 of P1 (8 networks x 2 arms x 3 seeds, P1's recipes) on this machine.

Training throughput is measured in GFLOP/s on the networks we can train (from a run store, and/or given
images/s), and carried to the other networks by their FLOPs per image, counted here the way `mfres train`
prints them (2 x multiply-adds of the convolutions and the classifier; ResNet-20: 81.1, ResNet-56: 251.0
MFLOPs, as mfres prints). Training costs ~3x the forward pass; the per-epoch evaluation of the 10000 test
images is counted at 1x forward.

usage: table1_cost.py [RUNS.sqlite] [--img-per-s NETWORK=IMG_PER_S ...]
"""
import sqlite3
import statistics
import sys


def conv(h, w, cin, cout, k, groups=1):
    return h * w * cout * (cin // groups) * k * k


def resnet(depth):  # basic blocks, CIFAR-10
    n = (depth - 2) // 6
    m, cin = conv(32, 32, 3, 16, 3), 16
    for c, hw in [(16, 32), (32, 16), (64, 8)]:
        for _ in range(n):
            m += conv(hw, hw, cin, c, 3) + conv(hw, hw, c, c, 3)
            cin = c
    return 2 * (m + 64 * 10)


def resnet_bottleneck(depth):  # He 2016b ResNet-164, CIFAR-10
    n = (depth - 2) // 9
    m, cin = conv(32, 32, 3, 16, 3), 16
    for s, (w, hw) in enumerate([(16, 32), (32, 16), (64, 8)]):
        for b in range(n):
            hin = hw * 2 if (b == 0 and s > 0) else hw
            m += conv(hin, hin, cin, w, 1) + conv(hw, hw, w, w, 3) + conv(hw, hw, w, 4 * w, 1)
            if b == 0:
                m += conv(hw, hw, cin, 4 * w, 1)
            cin = 4 * w
    return 2 * (m + 256 * 10)


def resnext(cardinality, d):  # ResNeXt-29 C x d, CIFAR-100
    m, cin = conv(32, 32, 3, 64, 3), 64
    for s, hw in enumerate([32, 16, 8]):
        width, out = cardinality * d * 2 ** s, 256 * 2 ** s
        for b in range(3):
            hin = hw * 2 if (b == 0 and s > 0) else hw
            m += conv(hin, hin, cin, width, 1) + conv(hw, hw, width, width, 3, cardinality) + conv(hw, hw, width, out, 1)
            if b == 0:
                m += conv(hw, hw, cin, out, 1)
            cin = out
    return 2 * (m + 1024 * 100)


# network: (FLOPs per image forward, epochs, training images)
TABLE1 = {
    "resnet20": (resnet(20), 160, 50000), "resnet32": (resnet(32), 160, 50000),
    "resnet44": (resnet(44), 160, 50000), "resnet56": (resnet(56), 160, 50000),
    "resnet110": (resnet(110), 160, 50000), "resnet164": (resnet_bottleneck(164), 160, 50000),
    "resnext29-8x64d": (resnext(8, 64), 300, 50000), "resnext29-16x64d": (resnext(16, 64), 300, 50000),
}
RUNS_PER_NETWORK = 2 * 3  # two arms, three seeds
TEST_IMAGES = 10000


def gflops_from(network, img_per_s):
    return 3 * TABLE1[network][0] * img_per_s / 1e9


def main(argv):
    measured = {}  # label -> GFLOP/s
    args = iter(argv)
    for a in args:
        if a == "--img-per-s":
            net, ips = next(args).split("=")
            measured[f"{net} at {ips} img/s"] = gflops_from(net, float(ips))
        else:
            db = sqlite3.connect(a)
            for net, in db.execute("SELECT DISTINCT network FROM runs ORDER BY network"):
                ips = [r[0] for r in db.execute(
                    "SELECT e.images_per_s FROM epochs e JOIN runs USING (run_id) WHERE network = ?", (net,))]
                if net in TABLE1 and ips:
                    med, best = statistics.median(ips), max(ips)
                    measured[f"{net}, median of {len(ips)} epochs: {med:.0f} img/s"] = gflops_from(net, med)
                    measured[f"{net}, fastest epoch: {best:.0f} img/s"] = gflops_from(net, best)
    if not measured:
        sys.exit(__doc__)
    print("| network | MFLOPs/image | epochs | " + " | ".join(f"hours, {k} ({g:.0f} GFLOP/s)" for k, g in measured.items()) + " |")
    print("|---|---|---|" + "---|" * len(measured))
    totals = [0.0] * len(measured)
    for net, (flops, epochs, n_train) in TABLE1.items():
        work = epochs * (3 * n_train + TEST_IMAGES) * flops * RUNS_PER_NETWORK  # FLOPs for all six runs
        hours = [work / (g * 1e9) / 3600 for g in measured.values()]
        totals = [t + h for t, h in zip(totals, hours)]
        print(f"| {net} (6 runs) | {flops / 1e6:.1f} | {epochs} | " + " | ".join(f"{h:,.0f}" for h in hours) + " |")
    print("| **total** | | | " + " | ".join(f"**{t:,.0f} h = {t / 24:,.0f} days**" for t in totals) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
