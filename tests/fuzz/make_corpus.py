#!/usr/bin/env python3
"""Writes the seed corpus of the fuzz targets (tests/fuzz/corpus/<target>/):
small valid files of each format, so that the fuzzer starts inside the parsers
instead of at their magic numbers. Run from the repository root; the output
is committed, so this only needs rerunning when a seed changes."""
import gzip, json, os, struct

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def put(target, name, blob):
    d = os.path.join(root, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(blob)


def idx_pair(images, labels):
    return struct.pack("<H", len(images)) + images + labels


n, rows, cols = 3, 2, 2
images = struct.pack(">IIII", 2051, n, rows, cols) + bytes(range(n * rows * cols))
labels = struct.pack(">II", 2049, n) + bytes([0, 9, 4])
put("idx", "raw", idx_pair(images, labels))
put("idx", "gzip", idx_pair(gzip.compress(images, mtime=0), gzip.compress(labels, mtime=0)))
put("idx", "gzip-images", idx_pair(gzip.compress(images, mtime=0), labels))

rec10 = bytes([3]) + bytes(i % 251 for i in range(3072))
rec100 = bytes([7, 42]) + bytes(i % 241 for i in range(3072))
put("cifar", "cifar10-two-files", bytes([128]) + rec10 + rec10)
put("cifar", "cifar100", bytes([255]) + rec100)


def safetensors(tensors, meta=None):
    header, data = {}, b""
    if meta:
        header["__metadata__"] = meta
    for name, shape, values in tensors:
        blob = struct.pack("<%df" % len(values), *values)
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [len(data), len(data) + len(blob)]}
        data += blob
    text = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<Q", len(text)) + text + data


put("safetensors", "model", safetensors(
    [("conv1.weight", [2, 1, 1, 1], [0.5, -1.0]), ("fc.bias", [3], [1.0, 2.0, 3.0]), ("tau", [], [1.0])],
    {"format": "mfres-resnet", "depth": "8", "input": "1x8x8"}))
put("safetensors", "empty", safetensors([]))
# The fuzzer's first find: a header that ends inside a number, at the end of the file.
h = b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4'
put("safetensors", "header-ends-in-digits", struct.pack("<Q", len(h)) + h)


def npy(descr, shape, payload, fortran=False):
    d = "{'descr': '%s', 'fortran_order': %s, 'shape': %s, }" % (descr, fortran, shape)
    total = (10 + len(d) + 1 + 63) // 64 * 64
    head = b"\x93NUMPY\x01\x00" + struct.pack("<H", total - 10) + d.encode() + b" " * (total - 10 - len(d) - 1) + b"\n"
    return head + payload


put("npy", "f8-2x3", npy("<f8", "(2, 3)", struct.pack("<6d", 1, 2, 3, 4, 5, 6)))
put("npy", "f4-1d", npy("<f4", "(4,)", struct.pack("<4f", 1, 2, 3, 4)))
put("npy", "fortran", npy("<f8", "(2, 2)", struct.pack("<4d", 1, 3, 2, 4), True))

put("csv", "header", b"x0,x1,y\n1, 2.5,-3\r\n4,5e-1,6\n\n")
put("csv", "plain", b"1,2\n3,4\n")
