"""PyTorch side of `deno task bench`: the same work, on the same machine, in the same run.

Usage: /usr/bin/python3 bench/reference/torch_bench.py '<json spec>' | @spec.json
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

# The spec inline, or `@file` for specs longer than one command-line argument may be (128 KiB on Linux).
spec = json.loads(open(sys.argv[1][1:]).read() if sys.argv[1].startswith("@") else sys.argv[1])
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
    elif kind == "encode_images":
        # `images` images through a full ViT (as vit_encode) in forward passes of `batch`, after one warm-up pass;
        # bench/scaling.ts runs each in a process of its own, so the peak RSS is this job's.
        import resource
        dim, heads, depth, size, batch = job["dim"], job["heads"], job["depth"], job["img"], job["batch"]
        tokens = (size // 16) ** 2 + 1
        blocks = nn.Sequential(*[Block(dim, heads) for _ in range(depth)])
        patch = nn.Conv2d(3, dim, 16, 16)
        cls = torch.zeros(1, 1, dim)
        pos = torch.zeros(1, tokens, dim)
        norm = nn.LayerNorm(dim, eps=1e-6)
        first = min(batch, job["images"])
        x = torch.randn(first, 3, size, size)

        def encode(n):
            h = patch(x[:n]).flatten(2).transpose(1, 2)
            h = torch.cat([cls.expand(n, -1, -1), h], 1) + pos
            return norm(blocks(h))
        with torch.no_grad():
            encode(first)  # warm-up
            t0 = time.perf_counter()
            done = 0
            while done < job["images"]:
                encode(min(batch, job["images"] - done))
                done += batch
            seconds = time.perf_counter() - t0
        emit(job["name"], seconds, images=job["images"],
             peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    elif kind == "probe":
        # Fast-mode probing as bench/scaling_work.ts did it: decode + preprocess every image of each task, features once
        # (concat of CLS and mean patch token of a ViT of the stand-in's sizes, in passes of 16), then per seed a
        # linear head trained with AdamW, label smoothing and the per-iteration warmup + cosine schedule for as many
        # epochs as our run trained (early stopping decided them), validation each epoch, the test split once.
        import resource
        from PIL import Image
        import torchvision.transforms as T
        sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures"))
        from reference_models import ViT
        v, h = job["vit"], job["hyper"]
        size = v["imgSize"]
        vit = ViT(img_size=size, patch_size=v["patchSize"], embed_dim=v["embedDim"], depth=v["depth"],
                  num_heads=v["numHeads"]).eval()
        pre = T.Compose([T.Resize((size, size), interpolation=T.InterpolationMode.BILINEAR), T.Grayscale(1),
                         T.ToTensor(), T.Lambda(lambda x: x.repeat(3, 1, 1)),
                         T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])

        def features(paths):
            out = []
            with torch.no_grad():
                for i in range(0, len(paths), 16):
                    x = torch.stack([pre(Image.open(p)) for p in paths[i:i + 16]])
                    t = vit.norm(vit.blocks_out(x))
                    out.append(torch.cat([t[:, 0], t[:, 1:].mean(1)], 1))
            return torch.cat(out) if out else torch.zeros(0, 2 * v["embedDim"])

        def authors_batch(n):
            q = round(0.25 * n)
            return 8 if q < 1 else min(64, 2 ** int(math.floor(math.log2(q))))

        def lr_at(e):
            if e < h["warmupEpochs"]:
                return h["lr"] * e / h["warmupEpochs"]
            return h["minLr"] + (h["lr"] - h["minLr"]) * 0.5 * (
                1 + math.cos(math.pi * (e - h["warmupEpochs"]) / (h["maxEpochs"] - h["warmupEpochs"])))

        with torch.no_grad():
            vit.blocks_out(torch.zeros(4, 3, size, size))  # warm-up
        t0 = time.perf_counter()
        for task in job["tasks"]:
            split = {s: [it for it in task["items"] if it["split"] == s] for s in ("train", "val", "test")}
            X = {s: features([it["path"] for it in split[s]]) for s in split}
            Y = {s: torch.tensor([it["label"] for it in split[s]]) for s in split}
            n, bs = len(split["train"]), authors_batch(len(split["train"]))
            for seed, epochs in enumerate(task["epochs"]):
                torch.manual_seed(seed)
                head = nn.Linear(X["train"].shape[1], task["classes"])
                nn.init.trunc_normal_(head.weight, std=2e-5)
                opt = torch.optim.AdamW(head.parameters(), lr=h["lr"], weight_decay=job["weightDecay"])
                iters = max(1, math.ceil(n / bs))
                for e in range(epochs):
                    perm = torch.randperm(n)
                    for it in range(iters):
                        for g in opt.param_groups:
                            g["lr"] = lr_at(e + it / iters)
                        idx = perm[it * bs:(it + 1) * bs]
                        loss = nn.functional.cross_entropy(head(X["train"][idx]), Y["train"][idx],
                                                           label_smoothing=h["labelSmoothing"])
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        opt.step()
                    with torch.no_grad():
                        z = head(X["val"])
                        nn.functional.cross_entropy(z, Y["val"])
                        z.argmax(1)
                with torch.no_grad():
                    head(X["test"]).softmax(1)
        emit(job["name"], time.perf_counter() - t0, peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
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
