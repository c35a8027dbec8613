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
the float32 side may have taken the other branch of the kink, which moves the
gradients below it by ~1e-3. The reference is never edited: a case whose
mismatches are all small (<= KINK_ERR_MAX) while such ReLU inputs exist is
drawn again with another seed (reported), at most RESEEDS times; a real bug
fails every draw.
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
# The losses before each SGD step and after the last. A ReLU input that sits
# within float32 reach of zero changes that step's update by ~1e-3 relative,
# and the next losses by up to ~1e-4 (measured: <= 7e-5; without such kinks ~1e-7).
# 5e-4 leaves room for that; a wrong update rule moves the losses by >= 1e-2.
STEP_TOL = 5e-4
# Parameters / running statistics / tau after the steps (bonus check). A ReLU
# kink crossed at any step moves its update by ~1e-3 relative, which reaches the
# parameters diluted by lr: 1e-3 leaves room for that and still catches a
# wrong update rule (weight decay on tau, a missing clamp or momentum term).
STATE_TOL = 1e-3
# ReLU inputs within this fraction of their tensor's rms of zero may take the
# other branch in float32 (measured float32 deviations: <= 3e-6 * rms in the
# basic ResNets).
# (1e-5 held for the basic ResNets; at the end of a 29-layer ResNeXt a float32
# ReLU input 7e-5 * rms from zero took the other branch.)
KINK_MARGIN = float(os.environ.get("MFRES_KINK_MARGIN", "1e-4"))
# A kink moves the gradients below it by ~1e-3 relative (up to 2e-2 measured);
# mismatches beyond this are not blamed on one.
KINK_ERR_MAX = 5e-2
RESEEDS = 3


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
    """One residual block: a chain of convolutions with a batch norm beside each.
    post: t = conv_i(a), a = relu(bn_i(t)); out = relu(sc + h * bn_last(t_last))
    pre:  a = relu(bn_i(t)), t = conv_i(a);  out = sc + h * t_last
    sc: x, option A, or downsample = 1x1 conv [+ BN] of the raw x."""

    def __init__(self, chain, preact, shortcut, particle):
        super().__init__()
        self.preact, self.shortcut, self.n = preact, shortcut, len(chain)
        for i, (c_in, c_out, k, stride, groups) in enumerate(chain):
            setattr(self, "conv%d" % (i + 1), nn.Conv2d(c_in, c_out, k, stride, k // 2, groups=groups, bias=False))
            setattr(self, "bn%d" % (i + 1), nn.BatchNorm2d(c_in if preact else c_out, eps=1e-5, momentum=0.1))
        if shortcut in ("proj", "proj+bn"):
            c_in, c_out = chain[0][0], chain[-1][1]
            stride = max(c[3] for c in chain)
            layers = [nn.Conv2d(c_in, c_out, 1, stride, 0, bias=False)]
            if shortcut == "proj+bn":
                layers.append(nn.BatchNorm2d(c_out, eps=1e-5, momentum=0.1))
            self.downsample = nn.Sequential(*layers)
        if particle:
            self.tau = nn.Parameter(torch.zeros(1))

    def forward(self, x, h):
        if self.shortcut == "A":
            sc = shortcut_a(x)
        elif self.shortcut == "identity":
            sc = x
        else:
            sc = self.downsample(x)
        t = x
        for i in range(1, self.n + 1):
            conv, bn = getattr(self, "conv%d" % i), getattr(self, "bn%d" % i)
            if self.preact:
                t = conv(relu(bn(t)))
            else:
                t = conv(t)
                t = bn(t) if i == self.n else relu(bn(t))
        return sc + h * t if self.preact else relu(sc + h * t)


class ResNet(nn.Module):
    """Every network of Table 1 from a model file's metadata: basic ResNets
    (6n+2), the pre-activation bottleneck (9n+2) and ResNeXt (9n+2)."""

    def __init__(self, meta, meanfield):
        super().__init__()
        depth, block, w = int(meta["depth"]), meta["block"], int(meta["base_width"])
        in_c, classes = int(meta["input"].split("x")[0]), int(meta["num_classes"])
        resnext = meta.get("family") == "resnext"
        bottleneck = resnext or block == "bottleneck"
        self.preact = block in ("preact", "bottleneck")
        self.meanfield = meanfield
        n = (depth - 2) // (9 if bottleneck else 6)
        self.particles = n - 1
        self.conv1 = nn.Conv2d(in_c, w, 3, 1, 1, bias=False)
        if not self.preact:
            self.bn1 = nn.BatchNorm2d(w)
        c_prev = w
        for s in range(3):
            blocks = []
            for j in range(n):
                stride = 2 if s > 0 and j == 0 else 1
                if not bottleneck:
                    c_out = w << s
                    chain = [(c_prev, c_out, 3, stride, 1), (c_out, c_out, 3, 1, 1)]
                    shortcut = "A" if stride == 2 else "identity"
                else:
                    c_out = (4 * w) << s
                    mid = (int(meta["cardinality"]) * int(meta["group_width"])) << s if resnext else w << s
                    groups = int(meta["cardinality"]) if resnext else 1
                    chain = [(c_prev, mid, 1, 1, 1), (mid, mid, 3, stride, groups), (mid, c_out, 1, 1, 1)]
                    shortcut = ("proj+bn" if resnext else "proj") if j == 0 else "identity"
                blocks.append(Block(chain, self.preact, shortcut, meanfield and j > 0))
                c_prev = c_out
            setattr(self, "layer%d" % (s + 1), nn.ModuleList(blocks))
        if self.preact:
            self.bn_final = nn.BatchNorm2d(c_prev)
        self.fc = nn.Linear(c_prev, classes)

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
def rel_err(a, b, floor=1e-30):
    """|a - b| / max(|b|, floor): floor keeps a tensor whose true value is zero
    (a bias that only batch norms see later has an exactly zero gradient) from
    turning float32 rounding into an infinite relative error."""
    a, b = a.double().reshape(-1), b.double().reshape(-1)
    return (a - b).norm().item() / max(b.norm().item(), floor)


def near_kinks(relus):
    """ReLU inputs of the float64 reference within float32 reach of zero
    (|y| < KINK_MARGIN * rms(y)): there the float32 side may legitimately take
    the other branch, and one such element moves every gradient below it by
    ~1e-3 relative (measured up to 2e-2 on one bias). Returns their number."""
    n = 0
    for y, _ in relus:
        yd = y.detach()
        rms = yd.pow(2).mean().sqrt().item()
        n += int((yd.abs() < KINK_MARGIN * rms).sum().item())
    return n


def run_case(build, tmp, case):
    name = case["name"]
    t0 = time.time()
    out = os.path.join(tmp, name)
    args = [os.path.join(build, "tools", "resnet_dump"), "--out", out]
    for k in ("model", "width", "depth", "block", "mode", "tau-init", "batch", "input", "classes", "seed", "steps", "lr", "momentum",
              "wd", "nesterov", "tau-lr-mult"):
        if k in case:
            args += ["--" + k, str(case[k])]
    p = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    if p.returncode != 0:
        print("FAIL %s: resnet_dump exited %d:\n%s" % (name, p.returncode, p.stdout))
        return "fail"
    weights, meta = load_safetensors(os.path.join(out, "model.safetensors"))
    inputs, _ = load_safetensors(os.path.join(out, "inputs.safetensors"))
    grads_c, _ = load_safetensors(os.path.join(out, "grads.safetensors"))
    final_c, _ = load_safetensors(os.path.join(out, "model_final.safetensors"))
    with open(os.path.join(out, "result.json")) as f:
        res = json.load(f)

    meanfield, grid = meta["mode"] == "meanfield", meta["tau_init"] == "grid"
    model = ResNet(meta, meanfield).double()
    sd = model.state_dict()
    ours = {k for k in sd if not k.endswith("num_batches_tracked")}
    if ours != set(weights):
        print("FAIL %s: state_dict names differ: only in C %s, only in torch %s" %
              (name, sorted(set(weights) - ours)[:5], sorted(ours - set(weights))[:5]))
        return "fail"
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
    # Against each tensor's norm, or 1e-3 of the whole gradient's where that is larger.
    g_floor = 1e-3 * sum(ref[k].double().norm().item() ** 2 for k in names) ** 0.5
    errs = {k: rel_err(grads_c[k], ref[k], g_floor) for k in names}
    kinks, kink_case = "", False
    bad = [k for k in names if not errs[k] <= GRAD_TOL]
    if bad:
        n_near = near_kinks(relus)
        kink_case = n_near > 0 and all(errs[k] <= KINK_ERR_MAX for k in bad)
        kinks = " [%d ReLU input(s) within float32 reach of zero; %d mismatching tensor(s), worst %.1e]" % (
            n_near, len(bad), max(errs[k] for k in bad))
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
    t_end = 1.0 if grid else float(model.particles)
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
        e = rel_err(v, sd_t[k], 1e-3 * v.numel() ** 0.5)  # zero tensors: 1e-3 per element
        if e > worst_state:
            worst_state, worst_state_name = e, k
        if not e <= STATE_TOL:
            ok = False
            msgs.append("after %d steps, %s: rel %.2e" % (steps, k, e))
    # ---- inference: C's final model, folded batch norms, against PyTorch's eval mode on the same tensors
    evaluator = ResNet(meta, meanfield).double()
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
          ("ok  " if ok else "kink" if kink_case else "FAIL", name, time.time() - t0, e_loss, worst_g, worst_g_name, worst_tau, kinks, worst_step, worst_state,
           worst_state_name, e_eval, ",".join("%.5f" % v for v in losses_t), tau_final))
    for m in msgs:
        print("    " + m)
    if not ok and kink_case:
        return "kink"
    return "ok" if ok else "fail"


def cases():
    base = dict(batch=8, input="3x16x16", classes=10, steps=3, lr=0.05, momentum=0.9, wd=5e-4, nesterov=0)
    out = []
    for depth in (8, 20):  # basic blocks
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
    # The Table 1 block kinds at small widths: the pre-activation bottleneck
    # (ResNet-164's block, 1x1 projections) and ResNeXt post- and
    # pre-activation (grouped 3x3, projection + BN), three blocks a stage so
    # that two particles per stage are sorted in reverse.
    small = dict(base, input="3x8x8", batch=8)
    out.append(dict(small, name="d29-bottleneck-meanfield", model="resnet29", block="bottleneck", mode="meanfield",
                    **{"tau-init": "grid"}, seed=14))
    out.append(dict(small, name="d11-bottleneck-vanilla", model="resnet11", block="bottleneck", mode="vanilla",
                    seed=15, nesterov=1))
    out.append(dict(small, name="resnext29-2x8d-postact-meanfield", model="resnext29-2x8d", width=16,
                    block="postact", mode="meanfield", **{"tau-init": "grid"}, seed=16, classes=100))
    out.append(dict(small, name="resnext29-2x8d-preact-meanfield", model="resnext29-2x8d", width=16,
                    block="preact", mode="meanfield", **{"tau-init": "unit"}, seed=17))
    return out


def main():
    build = os.environ.get("MFRES_BUILD", "build")
    tool = os.path.join(build, "tools", "resnet_dump")
    if not os.access(tool, os.X_OK):
        print("FAIL: %s not found; build it with `make %s` (or `make test`)" % (tool, tool))
        return 1
    failed, reseeded, ran = [], 0, 0
    with tempfile.TemporaryDirectory(prefix="mfres-torch-") as tmp:
        only = os.environ.get("MFRES_TORCH_CASES")  # a comma-separated subset of case names, for debugging
        for c in cases():
            if only and c["name"] not in only.split(","):
                continue
            # A case whose only mismatches are explained by ReLU inputs within
            # float32 reach of zero says nothing either way: it is drawn again
            # with other inputs and weights (never by editing the reference),
            # at most RESEEDS times; a real bug fails on every draw.
            for attempt in range(RESEEDS + 1):
                trial = dict(c, seed=c["seed"] + 1000 * attempt)
                if attempt:
                    trial["name"] = "%s-seed%d" % (c["name"], trial["seed"])
                    reseeded += 1
                r = run_case(build, tmp, trial)
                if r != "kink":
                    break
                print("     (%s: a ReLU kink explains the mismatch; drawing other inputs)" % trial["name"])
            ran += 1
            if r != "ok":
                failed.append(c["name"])
    if failed:
        print("FAILED: %d of %d cases: %s" % (len(failed), ran, " ".join(failed)))
        return 1
    print("all %d cases agree with PyTorch (float64); %d redrawn for a ReLU kink" % (ran, reseeded))
    return 0


if __name__ == "__main__":
    sys.exit(main())
