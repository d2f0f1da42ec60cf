"""PyTorch side of `deno task bench`: the same work, on the same machine, in the same run.

Usage: /usr/bin/python3 bench/reference/torch_bench.py '<json spec>'
Prints one JSON object per line: {"name": ..., "seconds": ...}.
Only the benchmark uses Python; the package never does at run time.
"""
import json
import math
import os
import sys
import time

import torch
import torch.nn as nn

spec = json.loads(sys.argv[1])
torch.manual_seed(0)
torch.set_num_threads(spec.get("threads", os.cpu_count()))


def timeit(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def emit(name, seconds, **extra):
    print(json.dumps({"name": name, "seconds": seconds, **extra}), flush=True)


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        a = ((q @ k.transpose(-2, -1)) * self.scale).softmax(-1)
        return self.proj((a @ v).transpose(1, 2).reshape(B, N, C))


class Block(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim, eps=1e-6), Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


for job in spec["jobs"]:
    kind = job["kind"]
    if kind == "matmul":
        m, k, n = job["m"], job["k"], job["n"]
        a, b = torch.randn(m, k), torch.randn(k, n)
        emit(job["name"], timeit(lambda: a @ b, job.get("repeats", 10)))
    elif kind == "vit_blocks":
        dim, heads, depth, batch, tokens = job["dim"], job["heads"], job["depth"], job["batch"], job["tokens"]
        blocks = nn.Sequential(*[Block(dim, heads) for _ in range(depth)])
        x = torch.randn(batch, tokens, dim)
        if job["backward"]:
            def step():
                blocks.zero_grad(set_to_none=True)
                blocks(x).square().mean().backward()
            emit(job["name"], timeit(step, job.get("repeats", 3)))
        else:
            with torch.no_grad():
                emit(job["name"], timeit(lambda: blocks(x), job.get("repeats", 3)))
    elif kind == "vit_encode":
        # Full ViT forward (patch embed, CLS, pos embed, blocks, final norm), batch of 224 px images.
        dim, heads, depth, batch = job["dim"], job["heads"], job["depth"], job["batch"]
        blocks = nn.Sequential(*[Block(dim, heads) for _ in range(depth)])
        patch = nn.Conv2d(3, dim, 16, 16)
        cls = torch.zeros(1, 1, dim)
        pos = torch.zeros(1, 197, dim)
        norm = nn.LayerNorm(dim, eps=1e-6)
        x = torch.randn(batch, 3, 224, 224)

        def encode():
            h = patch(x).flatten(2).transpose(1, 2)
            h = torch.cat([cls.expand(batch, -1, -1), h], 1) + pos
            return norm(blocks(h))
        with torch.no_grad():
            emit(job["name"], timeit(encode, job.get("repeats", 2)), images=batch)
    elif kind == "refine_step":
        # One RetFiner optimisation step: ViT + BERT with cross-attention in every layer, ITC + ITM + MLM + GM, AdamW.
        from refine_step import RefineStep
        model = RefineStep(job, job["batch"])
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step():
            opt.zero_grad(set_to_none=True)
            model().backward()
            opt.step()

        import resource
        seconds = timeit(step, job.get("repeats", 2))
        # Peak RSS of this whole process (Linux reports KiB); bench.ts runs this job in a process of its own.
        emit(job["name"], seconds, pairs=job["batch"], peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    elif kind == "decode":
        # The authors' probing path: PIL open → Resize(224, BILINEAR) → Grayscale → ToTensor → RGB → Normalize.
        from PIL import Image
        import torchvision.transforms as T
        tf = T.Compose([T.Resize((job["size"], job["size"]), interpolation=T.InterpolationMode.BILINEAR), T.Grayscale(1),
                        T.ToTensor(), T.Lambda(lambda x: x.repeat(3, 1, 1)),
                        T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
        paths = job["paths"]
        emit(job["name"], timeit(lambda: [tf(Image.open(p)) for p in paths], job.get("repeats", 3)), images=len(paths))
    else:
        raise SystemExit(f"unknown job kind {kind}")
