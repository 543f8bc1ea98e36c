"""DistributedDataParallel on the CPU: two gloo processes train one run (spawned, not torchrun)."""

import json
import os
import socket

import pytest
import safetensors.torch
import torch
import torch.multiprocessing as mp

from noisecraft.train import Trainer
from noisecraft.train import distributed as dist_ctx
from train_helpers import vector_config


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(rank: int, world: int, port: int, run_dir: str, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world),
                      RANK=str(rank), LOCAL_RANK=str(rank), GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(1)
    config, dataset = vector_config(steps=4, batch_size=16, log_every=2)
    trainer = Trainer(config, run_dir, dataset, device="cpu", progress=False)
    trainer.fit()
    # The test (not the trainer) records each rank's final weights to compare them.
    path = os.path.join(out_dir, f"rank{rank}.safetensors")
    safetensors.torch.save_file(trainer.net.state_dict(), path)


@pytest.mark.slow
def test_two_gloo_processes_stay_in_sync_and_only_rank0_writes(tmp_path):
    run_dir, out_dir = tmp_path / "run", tmp_path / "ranks"
    out_dir.mkdir()
    mp.spawn(worker, args=(2, free_port(), str(run_dir), str(out_dir)), nprocs=2, join=True)
    r0 = safetensors.torch.load_file(out_dir / "rank0.safetensors")
    r1 = safetensors.torch.load_file(out_dir / "rank1.safetensors")
    saved = safetensors.torch.load_file(run_dir / "model.safetensors")
    for k in r0:  # DDP averaged the gradients, so both replicas took identical steps
        assert torch.equal(r0[k], r1[k]) and torch.equal(r0[k], saved[k]), k
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [2, 4]  # one writer: no duplicated lines
    assert log[0]["examples_per_s"] > 0
    state = json.loads((run_dir / "state.json").read_text())
    assert state["world_size"] == 2 and len(state["data"]) == 2
    assert len(set(state["rng"]["train"])) == 2  # each rank drew its own noise
    assert not [n for n in os.listdir(run_dir) if n.endswith(".tmp")]


def test_single_process_context_without_torchrun(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = dist_ctx.setup("cpu")
    assert (ctx.rank, ctx.world_size, ctx.is_main, ctx.distributed) == (0, 1, True, False)
    assert dist_ctx.gather_bytes(b"abc", ctx) == [b"abc"]
    values = torch.tensor([1.0, 2.0])
    assert torch.equal(dist_ctx.mean_over_ranks(values, ctx), values.double())
