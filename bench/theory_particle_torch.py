#!/usr/bin/python3
"""PyTorch reference for `mfres theory bench`: the same particle ResNet and the same
training step, in float64 on 2 threads.

Model (include/mfres/theory_particle.h): X0 = W2 x (W2 = I, d_in = d), per block l
X <- X + h_l * (1/M) * sum_m u_m * act(w_m . X + b_m), out = X w1, E = mean 0.5 (out - y)^2;
one step = forward, backward (autograd), and theta -= lr * L * M * grad (the mean-field
time scale), full batch. Prints steps_per_s=... like the C benchmark.
"""
import argparse
import math
import time

import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--L", type=int, default=16)
    ap.add_argument("--M", type=int, default=64)
    ap.add_argument("--d", type=int, default=16)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--act", default="tanh", choices=["tanh", "relu", "softplus", "sigmoid"])
    ap.add_argument("--lr", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    dt = torch.float64
    L, M, d, n = a.L, a.M, a.d, a.n
    act = {"tanh": torch.tanh, "relu": torch.relu, "softplus": torch.nn.functional.softplus,
           "sigmoid": torch.sigmoid}[a.act]
    # the same distributions as mfres_pnet_init (scale 1): u ~ N(0,1), w ~ N(0,1/d), b ~ N(0,1/4)
    U = torch.randn(L, M, d, dtype=dt).requires_grad_()
    W = (torch.randn(L, M, d, dtype=dt) / math.sqrt(d)).requires_grad_()
    B = (0.5 * torch.randn(L, M, dtype=dt)).requires_grad_()
    w1 = torch.randn(d, dtype=dt)
    w1 /= w1.norm()
    x = torch.randn(n, d, dtype=dt)
    x *= math.sqrt(d) / x.norm(dim=1, keepdim=True)
    y = torch.randn(n, dtype=dt)
    h = 1.0 / L
    params = [U, W, B]
    step_size = a.lr * L * M

    def step():
        X = x
        for l in range(L):
            Z = torch.addmm(B[l], X, W[l].t())
            X = X + (h / M) * (act(Z) @ U[l])
        E = 0.5 * ((X @ w1 - y) ** 2).mean()
        for p in params:
            p.grad = None
        E.backward()
        with torch.no_grad():
            for p in params:
                p.sub_(step_size * p.grad)
        return E.item()

    for _ in range(10):
        step()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        E = step()
    el = time.perf_counter() - t0
    sps = a.steps / el
    print(f"torch: L={L} M={M} d={d} n={n} act={a.act} threads={torch.get_num_threads()} steps={a.steps} loss={E:.6e}")
    print(f"steps_per_s={sps:.2f} particle_steps_per_s={sps * L * M:.4g}")


if __name__ == "__main__":
    main()
