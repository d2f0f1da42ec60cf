"""PyTorch's side of `deno task bench --only mpi`: the refinement step (refine_step.py) on 1 or N processes.

Usage: /usr/bin/python3 bench/reference/torch_ddp.py '<json spec>'
spec: {job, micro, threads, warmup, steps, rank, world, init}. The global batch job["batch"] is split into
micro-batches of `micro`; with world > 1 each process computes its share of them inside DistributedDataParallel
(gloo backend, init_method `init`: file:// or tcp://127.0.0.1:port), gradients averaged by DDP's allreduce; with
world == 1 one process accumulates them (no DDP). Rank 0 prints one JSON line {seconds, steps, ranks}.
"""
import contextlib
import datetime
import json
import sys
import time

import torch
import torch.distributed as dist

from refine_step import RefineStep

spec = json.loads(sys.argv[1])
job, micro, world, rank = spec["job"], spec["micro"], spec["world"], spec["rank"]
torch.set_num_threads(spec["threads"])
torch.manual_seed(0)
chunks = job["batch"] // micro
if job["batch"] % micro or chunks % world:
    raise SystemExit(f"batch {job['batch']} in micro-batches of {micro} does not share out over {world} processes")
mine = chunks // world
model = RefineStep(job, micro)
if world > 1:
    # A peer that died must end this one within minutes (gloo waits 30 by default).
    dist.init_process_group("gloo", init_method=spec["init"], rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=120))
    # DDP must know whether some parameters get no gradient (it waits for every one otherwise): find out once.
    model().backward()
    unused = any(p.grad is None for p in model.parameters() if p.requires_grad)
    model.zero_grad(set_to_none=True)
    net = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=unused)
else:
    net = model
opt = torch.optim.AdamW(net.parameters(), lr=1e-4)


def step():
    opt.zero_grad(set_to_none=True)
    for i in range(mine):
        # DDP allreduces on the last backward of the step only.
        quiet = net.no_sync() if world > 1 and i < mine - 1 else contextlib.nullcontext()
        with quiet:
            (net() / mine).backward()
    opt.step()


for _ in range(spec["warmup"]):
    step()
times = []
for _ in range(spec["steps"]):
    if world > 1:
        dist.barrier()
    t0 = time.perf_counter()
    step()
    times.append(time.perf_counter() - t0)
if rank == 0:
    print(json.dumps({"seconds": sorted(times)[len(times) // 2], "steps": times, "ranks": world}), flush=True)
if world > 1:
    dist.destroy_process_group()
