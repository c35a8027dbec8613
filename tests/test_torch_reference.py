"""mfres against PyTorch: the same ResNet, the same weights, the same inputs.

For each case the C tool build/tools/resnet_dump (tests/tools/resnet_dump.c)
builds a ResNet with libmfres, writes its weights and a random batch, the loss
and every parameter gradient after one training forward + backward (float32,
oneDNN), and the losses of a few SGD steps on that batch. This script builds
the same network in PyTorch (an nn.Module with the same state_dict names),
loads those weights into it in float64 -- the independent reference -- and
checks:
  - the loss and every gradient tensor, theta and tau (norm-wise relative
    error per tensor <= GRAD_TOL);
  - the loss before each of the SGD steps and after the last (torch.optim.SGD,
    two parameter groups: theta with weight decay, tau with lr * tau_lr_mult and
    no weight decay; tau clamped to [0, T_end] after each step) <= STEP_TOL;
  - the parameters, running statistics and tau after the steps (bonus);
  - the inference loss (batch norms with running statistics; mfres folds them
    into the convolutions) of the final C model, loaded into a fresh float64
    PyTorch model in eval mode <= LOSS_TOL.
Where a ReLU input of the float64 reference lies within float32 reach of zero,
the float32 side may have taken the other branch of the kink; resolve_kinks
accepts that other one-sided gradient, and says so in the case's line.
It prints one line per case and exits 1 on any mismatch, naming the tensor.

Run as `/usr/bin/python3 tests/test_torch_reference.py` from the repository
root (Debian's python3-torch); MFRES_BUILD names the build directory (build).
"""
import json
import os
import struct
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

torch.set_num_threads(2)
torch.manual_seed(0)

# Gradients: float32 (C) against float64 (here) after one forward/backward; the
# float32 rounding of ~1e-7 grows to ~1e-6 through the network, so 1e-4 is a
# wide margin that still catches any real bug (a wrong sign, a missing step h,
# a misrouted block give errors of order 1).
GRAD_TOL = 1e-4
LOSS_TOL = 1e-4
# The losses before each SGD step and after the last. The step-0 gradient is
# kink-resolved (resolve_kinks), but a ReLU input that sits within float32 reach
# of zero at step 1 or 2 changes that step's update by ~1e-3 relative, and the
# next losses by up to ~1e-4 (measured: <= 7e-5; without such kinks ~1e-7).
# 5e-4 leaves room for that; a wrong update rule moves the losses by >= 1e-2.
STEP_TOL = 5e-4
# Parameters / running statistics / tau after the steps (bonus check). Only the
# step-0 gradient is kink-resolved (see resolve_kinks); a ReLU kink crossed at
# a later step moves its update by ~1e-3 relative, which reaches the
# parameters diluted by lr: 1e-3 leaves room for that and still catches a
# wrong update rule (weight decay on tau, a missing clamp or momentum term).
STATE_TOL = 1e-3
# ReLU inputs within this fraction of their tensor's rms of zero may take the
# other branch in float32 (measured float32 deviations: <= 3e-6 * rms).
KINK_MARGIN = 1e-5
MAX_KINKS = 16
DEBUG_KINKS = bool(os.environ.get("MFRES_DEBUG_KINKS"))


# ---------------------------------------------------------------- safetensors
_DTYPES = {"F32": torch.float32, "F64": torch.float64, "I32": torch.int32, "I64": torch.int64}


def load_safetensors(path):
    """Returns ({name: tensor}, metadata) from a safetensors file (8-byte
    little-endian header length, a JSON header, then raw little-endian data)."""
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n].decode("utf-8"))
    meta = header.pop("__metadata__", {}) or {}
    data = bytearray(blob[8 + n:])
    tensors = {}
    for name, info in header.items():
        dtype = _DTYPES[info["dtype"]]
        start, end = info["data_offsets"]
        shape = info["shape"]
        if end > start:
            t = torch.frombuffer(data, dtype=dtype, count=(end - start) // torch.tensor([], dtype=dtype).element_size(),
                                 offset=start)
        else:
            t = torch.zeros(0, dtype=dtype)
        tensors[name] = t.reshape(shape).clone()
    return tensors, meta


# ---------------------------------------------------------------- the network
# While a list, every ReLU records (input, output) here, the output keeping its
# gradient: the kink resolution below needs both.
_RELU_LOG = None


def relu(y):
    o = F.relu(y)
    if _RELU_LOG is not None and o.requires_grad:
        o.retain_grad()
        _RELU_LOG.append((y, o))
    return o


def shortcut_a(x):
    """Option A: stride-2 subsample, then C/2 zero channels on each side."""
    c = x.shape[1]
    return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, c // 2, c // 2))


class Block(nn.Module):
    def __init__(self, c_in, c_out, stride, preact, particle):
        super().__init__()
        self.preact, self.downsample = preact, stride != 1
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_in if preact else c_out, eps=1e-5, momentum=0.1)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out, eps=1e-5, momentum=0.1)
        if particle:
            self.tau = nn.Parameter(torch.zeros(1))

    def forward(self, x, h):
        sc = shortcut_a(x) if self.downsample else x
        if self.preact:
            return sc + h * self.conv2(relu(self.bn2(self.conv1(relu(self.bn1(x))))))
        return relu(sc + h * self.bn2(self.conv2(relu(self.bn1(self.conv1(x))))))


class ResNet(nn.Module):
    def __init__(self, depth, preact, meanfield, in_c, classes, width=16):
        super().__init__()
        n = (depth - 2) // 6
        self.preact, self.meanfield = preact, meanfield
        self.conv1 = nn.Conv2d(in_c, width, 3, 1, 1, bias=False)
        if not preact:
            self.bn1 = nn.BatchNorm2d(width)
        for s in range(3):
            c_out = width << s
            blocks = []
            for j in range(n):
                down = s > 0 and j == 0
                blocks.append(Block(c_out // 2 if down else c_out, c_out, 2 if down else 1, preact,
                                    meanfield and j > 0))
            setattr(self, "layer%d" % (s + 1), nn.ModuleList(blocks))
        if preact:
            self.bn_final = nn.BatchNorm2d(4 * width)
        self.fc = nn.Linear(4 * width, classes)

    def stages(self):
        return [self.layer1, self.layer2, self.layer3]

    def run_stage(self, blocks, x):
        x = blocks[0](x, 1.0)  # the stage head: fixed, step 1
        parts = list(blocks[1:])
        if not self.meanfield:
            for b in parts:
                x = b(x, 1.0)
            return x
        # Algorithm 1: sort by tau (stable, ties by index), h_l = tau^l - tau^(l-1),
        # tau^(-1) = 0, as tensor expressions so autograd gives the exact tau gradient.
        order = sorted(range(len(parts)), key=lambda i: (parts[i].tau.item(), i))
        prev = None
        for i in order:
            t = parts[i].tau
            h = t if prev is None else t - prev
            x = parts[i](x, h)
            prev = t
        return x

    def forward(self, x):
        x = self.conv1(x)
        if not self.preact:
            x = relu(self.bn1(x))
        for blocks in self.stages():
            x = self.run_stage(blocks, x)
        if self.preact:
            x = relu(self.bn_final(x))
        return self.fc(x.mean(dim=(2, 3)))

    def tau_params(self):
        return [p for n, p in self.named_parameters() if n.endswith(".tau")]

    def theta_params(self):
        return [p for n, p in self.named_parameters() if not n.endswith(".tau")]


# ---------------------------------------------------------------- comparison
def rel_err(a, b):
    a, b = a.double().reshape(-1), b.double().reshape(-1)
    return (a - b).norm().item() / max(b.norm().item(), 1e-30)


def resolve_kinks(relus, params, names, grads_c, ref, errs):
    """The gradient of a ReLU network jumps where a ReLU input crosses zero.
    Where the float64 reference has a ReLU input within float32 reach of zero
    (|y| < KINK_MARGIN * rms(y); float32 forwards deviate by <= ~3e-6 * rms),
    the float32 side may legitimately have taken the other branch, and one such
    element can move every gradient below it by ~1e-3. For those elements, the
    other one-sided gradient is ref -/+ g_e * dy_e/dtheta (g_e the gradient
    reaching the ReLU output): apply, in order of increasing margin, each flip
    that brings the reference closer to the C gradients. Only a handful of
    near-zero elements qualify, each changing the gradients by ~1e-3 relative:
    no real bug (errors of order 1) can hide behind them."""
    cands = []
    for li, (y, o) in enumerate(relus):
        yd = y.detach()
        rms = yd.pow(2).mean().sqrt().item()
        near = (yd.abs() < KINK_MARGIN * rms).reshape(-1).nonzero().reshape(-1)
        for e in near.tolist():
            cands.append((abs(yd.reshape(-1)[e].item()) / rms, li, e))
    cands.sort()
    cands = cands[:MAX_KINKS]
    plist = [params[k] for k in names]

    def objective(g):
        return sum(min(rel_err(grads_c[k], g[k]), 1.0) ** 2 for k in names)

    best = objective(ref)
    flipped, deltas = [], {}
    for _ in range(3):  # a flip may only pay off once a larger one is applied: a few passes
        changed = False
        for margin, li, e in cands:
            if (li, e) in flipped:
                continue
            if (li, e) not in deltas:
                y, o = relus[li]
                g_e = o.grad.reshape(-1)[e].item()
                sign = -1.0 if y.reshape(-1)[e].item() > 0 else 1.0  # mask 1 -> 0 removes g_e, else adds it
                d = torch.autograd.grad(y.reshape(-1)[e], plist, retain_graph=True, allow_unused=True) \
                    if g_e != 0.0 else [None] * len(plist)
                deltas[(li, e)] = {k: sign * g_e * dk for k, dk in zip(names, d) if dk is not None}
            delta = deltas[(li, e)]
            if not delta:
                continue
            trial = {k: ref[k] + delta[k] if k in delta else ref[k] for k in names}
            obj = objective(trial)
            if DEBUG_KINKS:
                print("    kink cand margin %.1e layer %d: objective %.3e -> %.3e" % (margin, li, best, obj))
            if obj < 0.9 * best:
                ref, best, changed = trial, obj, True
                flipped.append((li, e))
                if all(rel_err(grads_c[k], ref[k]) <= 0.5 * GRAD_TOL for k in names):
                    break  # explained: no need to look further
        if not changed or all(rel_err(grads_c[k], ref[k]) <= 0.5 * GRAD_TOL for k in names):
            break
    margins = {(c[1], c[2]): c[0] for c in cands}
    flipped = ["%.0e" % margins[f] for f in flipped]
    errs = {k: rel_err(grads_c[k], ref[k]) for k in names}
    note = " [%d ReLU kink(s) resolved, margins %s]" % (len(flipped), ",".join(flipped)) if flipped else \
        " [no ReLU kink explains it: %d candidates]" % len(cands)
    return ref, errs, note


def run_case(build, tmp, case):
    name = case["name"]
    t0 = time.time()
    out = os.path.join(tmp, name)
    args = [os.path.join(build, "tools", "resnet_dump"), "--out", out]
    for k in ("depth", "block", "mode", "tau-init", "batch", "input", "classes", "seed", "steps", "lr", "momentum",
              "wd", "nesterov", "tau-lr-mult"):
        if k in case:
            args += ["--" + k, str(case[k])]
    p = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    if p.returncode != 0:
        print("FAIL %s: resnet_dump exited %d:\n%s" % (name, p.returncode, p.stdout))
        return False
    weights, meta = load_safetensors(os.path.join(out, "model.safetensors"))
    inputs, _ = load_safetensors(os.path.join(out, "inputs.safetensors"))
    grads_c, _ = load_safetensors(os.path.join(out, "grads.safetensors"))
    final_c, _ = load_safetensors(os.path.join(out, "model_final.safetensors"))
    with open(os.path.join(out, "result.json")) as f:
        res = json.load(f)

    depth, preact = int(meta["depth"]), meta["block"] == "preact"
    meanfield, grid = meta["mode"] == "meanfield", meta["tau_init"] == "grid"
    in_c = int(meta["input"].split("x")[0])
    model = ResNet(depth, preact, meanfield, in_c, int(meta["num_classes"]), int(meta["base_width"])).double()
    sd = model.state_dict()
    ours = {k for k in sd if not k.endswith("num_batches_tracked")}
    if ours != set(weights):
        print("FAIL %s: state_dict names differ: only in C %s, only in torch %s" %
              (name, sorted(set(weights) - ours)[:5], sorted(ours - set(weights))[:5]))
        return False
    model.load_state_dict({k: v.double() for k, v in weights.items()}, strict=False)
    model.train()
    x = inputs["images"].double()
    y = inputs["labels"].long()
    params = dict(model.named_parameters())

    ok = True
    msgs = []
    # ---- loss and gradients
    global _RELU_LOG
    _RELU_LOG = []
    model.zero_grad()
    loss = F.cross_entropy(model(x), y)
    loss.backward(retain_graph=True)
    relus, _RELU_LOG = _RELU_LOG, None
    e_loss = abs(res["loss0"] - loss.item()) / abs(loss.item())
    if e_loss > LOSS_TOL:
        ok = False
        msgs.append("loss: C %.9g torch %.9g rel %.2e" % (res["loss0"], loss.item(), e_loss))
    if set(grads_c) != set(params):
        ok = False
        msgs.append("gradient names differ: only in C %s, only in torch %s" %
                    (sorted(set(grads_c) - set(params))[:5], sorted(set(params) - set(grads_c))[:5]))
    names = sorted(set(grads_c) & set(params))
    ref = {k: params[k].grad.clone() for k in names}
    errs = {k: rel_err(grads_c[k], ref[k]) for k in names}
    kinks = ""
    if any(not e <= GRAD_TOL for e in errs.values()):
        ref, errs, kinks = resolve_kinks(relus, params, names, grads_c, ref, errs)
        for k in names:  # the SGD steps start from the gradient the C side took
            params[k].grad.copy_(ref[k])
    del relus
    worst_g_name = max(errs, key=errs.get) if errs else ""
    worst_g = errs.get(worst_g_name, 0.0)
    worst_tau = max([e for k, e in errs.items() if k.endswith(".tau")] or [0.0])
    for k in names:
        if not errs[k] <= GRAD_TOL:
            ok = False
            msgs.append("gradient %s: rel %.2e (C norm %.6g, torch norm %.6g)" %
                        (k, errs[k], grads_c[k].norm().item(), ref[k].norm().item()))

    # ---- SGD steps on the same batch (the first forward/backward above is step 0)
    steps = int(res["steps"])
    lr, mom, wd = float(res["lr"]), float(res["momentum"]), float(res["wd"])
    nesterov, tau_mult = bool(res["nesterov"]), float(res["tau_lr_mult"])
    groups = [{"params": model.theta_params(), "weight_decay": wd}]
    taus = model.tau_params()
    if taus:
        groups.append({"params": taus, "lr": lr * tau_mult, "weight_decay": 0.0})
    opt = torch.optim.SGD(groups, lr=lr, momentum=mom, weight_decay=wd, nesterov=nesterov)
    n_part = (depth - 2) // 6 - 1
    t_end = 1.0 if grid else float(n_part)
    losses_t = [loss.item()]
    for k in range(steps):
        if k > 0:
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            losses_t.append(loss.item())
        opt.step()
        with torch.no_grad():
            for t in taus:
                t.clamp_(0.0, t_end)
    with torch.no_grad():
        losses_t.append(F.cross_entropy(model(x), y).item())
    losses_c = list(res["losses"]) + [res["final_loss"]]
    worst_step = 0.0
    for k, (lc, lt) in enumerate(zip(losses_c, losses_t)):
        e = abs(lc - lt) / abs(lt)
        worst_step = max(worst_step, e)
        if not e <= STEP_TOL:
            ok = False
            msgs.append("loss at step %d: C %.9g torch %.9g rel %.2e" % (k, lc, lt, e))
    if len(losses_c) != len(losses_t):
        ok = False
        msgs.append("C recorded %d losses, torch %d" % (len(losses_c), len(losses_t)))

    # ---- bonus: parameters, running statistics and tau after the steps. Both
    # sides ran steps + 1 training forwards (the last one for the final loss),
    # each updating the running statistics (momentum 0.1, unbiased variance).
    sd_t = model.state_dict()
    worst_state, worst_state_name = 0.0, ""
    for k, v in sorted(final_c.items()):
        e = rel_err(v, sd_t[k])
        if e > worst_state:
            worst_state, worst_state_name = e, k
        if not e <= STATE_TOL:
            ok = False
            msgs.append("after %d steps, %s: rel %.2e" % (steps, k, e))
    # ---- inference: C's final model, folded batch norms, against PyTorch's eval mode on the same tensors
    evaluator = ResNet(depth, preact, meanfield, in_c, int(meta["num_classes"]), int(meta["base_width"])).double()
    evaluator.load_state_dict({k: v.double() for k, v in final_c.items()}, strict=False)
    evaluator.eval()
    with torch.no_grad():
        eval_t = F.cross_entropy(evaluator(x), y).item()
    e_eval = abs(res["eval_loss"] - eval_t) / abs(eval_t)
    if not e_eval <= LOSS_TOL:
        ok = False
        msgs.append("inference loss: C %.9g torch %.9g rel %.2e" % (res["eval_loss"], eval_t, e_eval))
    tau_final = ""
    if taus:
        tau_final = " tau after: C %s torch %s" % (["%.4f" % v for v in res["tau_final"]],
                                                 ["%.4f" % t.item() for t in taus])
    print("%s %-36s %4.1fs loss %.1e | grad max %.1e (%s) tau %.1e%s | steps %.1e | state %.1e (%s) | eval %.1e | losses %s%s" %
          ("ok  " if ok else "FAIL", name, time.time() - t0, e_loss, worst_g, worst_g_name, worst_tau, kinks, worst_step, worst_state,
           worst_state_name, e_eval, ",".join("%.5f" % v for v in losses_t), tau_final))
    for m in msgs:
        print("    " + m)
    return ok


def cases():
    base = dict(batch=8, input="3x16x16", classes=10, steps=3, lr=0.05, momentum=0.9, wd=5e-4, nesterov=0)
    out = []
    for depth in (8, 20):
        for block in ("postact", "preact"):
            for mode in ("vanilla", "meanfield"):
                c = dict(base, depth=depth, block=block, mode=mode, seed=len(out) + 1,
                         name="d%d-%s-%s" % (depth, block, mode))
                if mode == "meanfield":
                    c["tau-init"] = "grid"
                out.append(c)
    # Other inputs and optimiser settings: a one-channel input whose size is
    # not a power of two, nesterov, a tau learning-rate multiplier, unit tau; a
    # deeper net (4 particles per stage, reversed) for the sort. (Small maps
    # keep the number of ReLU inputs within float32 reach of zero low: at
    # 1x28x28, batch 12, the AVX2 kernels put several on the other side.)
    out.append(dict(base, name="d20-postact-meanfield-1x20x20-unit", depth=20, block="postact", mode="meanfield",
                    **{"tau-init": "unit"}, input="1x20x20", batch=8, seed=11, nesterov=1, **{"tau-lr-mult": 0.5}))
    out.append(dict(base, name="d20-preact-vanilla-3x32x32", depth=20, block="preact", mode="vanilla",
                    input="3x32x32", batch=8, seed=12, nesterov=1))
    out.append(dict(base, name="d32-preact-meanfield-grid", depth=32, block="preact", mode="meanfield",
                    **{"tau-init": "grid"}, seed=13, **{"tau-lr-mult": 2}))
    return out


def main():
    build = os.environ.get("MFRES_BUILD", "build")
    tool = os.path.join(build, "tools", "resnet_dump")
    if not os.access(tool, os.X_OK):
        print("FAIL: %s not found; build it with `make %s` (or `make test`)" % (tool, tool))
        return 1
    failed = []
    with tempfile.TemporaryDirectory(prefix="mfres-torch-") as tmp:
        for c in cases():
            if not run_case(build, tmp, c):
                failed.append(c["name"])
    if failed:
        print("FAILED: %d of %d cases: %s" % (len(failed), len(cases()), " ".join(failed)))
        return 1
    print("all %d cases agree with PyTorch (float64)" % len(cases()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
