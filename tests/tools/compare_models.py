"""Compares the tensors of two mfres safetensors files (model.safetensors or
state.safetensors): prints the relative difference |a-b|/|a| of all their
values together (parameters and running statistics); exits 1 above --max or
below --min.
Reads the format directly (8-byte header length, JSON header, raw data), so it
needs only numpy."""
import argparse, json, struct, sys
import numpy as np

def load(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        assert t["dtype"] == "F32", (path, name, t["dtype"])
        a, b = t["data_offsets"]
        out[name] = np.frombuffer(data[a:b], dtype=np.float32).reshape(t["shape"])
    return out

p = argparse.ArgumentParser()
p.add_argument("a"); p.add_argument("b")
p.add_argument("--max", type=float, help="fail if the difference is above this")
p.add_argument("--min", type=float, help="fail if the difference is below this")
args = p.parse_args()
A, B = load(args.a), load(args.b)
if set(A) != set(B):
    sys.exit(f"different tensors: {sorted(set(A) ^ set(B))}")
names = sorted(A)
a = np.concatenate([A[n].ravel() for n in names]).astype(np.float64)
b = np.concatenate([B[n].ravel() for n in names]).astype(np.float64)
diff = float(np.linalg.norm(a - b) / np.linalg.norm(a))
print(f"{args.a} vs {args.b}: relative difference |a-b|/|a| = {diff:.3g} over {a.size} values")
if args.max is not None and diff > args.max:
    sys.exit(f"above the tolerance {args.max:g}")
if args.min is not None and diff < args.min:
    sys.exit(f"below {args.min:g}")
