"""Torch's threads: the usable cores (affinity, cgroup quota) less the loader workers, at least
one, `--threads` to override; every command that runs torch applies it and says so first; a GPU
asked for where there is none is one line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from cli import main as cli_main
from pretrain import threads
from pretrain import train as train_module
from pretrain.config import config_from_options
from pretrain.data import loader
from pretrain.distributed import DeviceError, pick_device
from pretrain.models import create_model
from pretrain.threads import ThreadPlan, cgroup_cpu_limit, plan_threads, torch_threads
from pretrain.train import pretrain
from tests.shardkit import make_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("ds"), num_shards=2, per_shard=8)


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


# ---------------------------------------------------------------- the cores a process may use


def test_cgroup_v2_quota_is_the_tightest_on_the_way_up(tmp_path):
    root, membership = tmp_path / "cgroup", tmp_path / "self-cgroup"
    write(membership, "0::/jobs/trainer\n")
    write(root / "cpu.max", "400000 100000\n")
    write(root / "jobs" / "cpu.max", "150000 100000\n")  # 1.5 CPUs for every job
    write(root / "jobs" / "trainer" / "cpu.max", "max 100000\n")
    assert cgroup_cpu_limit(root, membership) == 1.5
    write(root / "jobs" / "cpu.max", "max 100000\n")
    assert cgroup_cpu_limit(root, membership) == 4.0
    write(root / "cpu.max", "max\n")
    assert cgroup_cpu_limit(root, membership) is None  # no quota anywhere
    write(root / "jobs" / "trainer" / "cpu.max", "lots of cpus\n")
    assert cgroup_cpu_limit(root, membership) is None  # unreadable: no limit claimed


def test_cgroup_v1_quota_and_a_container_seeing_its_own_root(tmp_path):
    root, membership = tmp_path / "cgroup", tmp_path / "self-cgroup"
    write(membership, "4:memory:/x\n3:cpu,cpuacct:/\n")  # inside a container: "/"
    write(root / "cpu,cpuacct" / "cpu.cfs_quota_us", "200000\n")
    write(root / "cpu,cpuacct" / "cpu.cfs_period_us", "100000\n")
    assert cgroup_cpu_limit(root, membership) == 2.0
    write(root / "cpu,cpuacct" / "cpu.cfs_quota_us", "-1\n")
    assert cgroup_cpu_limit(root, membership) is None
    assert cgroup_cpu_limit(root, tmp_path / "no-such-file") is None  # not Linux


def test_usable_cores_are_the_affinity_capped_by_the_quota(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setattr(threads, "cgroup_cpu_limit", lambda: None)
    assert threads.usable_cores() == 8
    monkeypatch.setattr(threads, "cgroup_cpu_limit", lambda: 2.5)
    assert threads.usable_cores() == 2  # rounded down: 3 threads would be throttled
    monkeypatch.setattr(threads, "cgroup_cpu_limit", lambda: 0.2)
    assert threads.usable_cores() == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3}, raising=False)
    monkeypatch.setattr(threads, "cgroup_cpu_limit", lambda: 16.0)
    assert threads.usable_cores() == 1


def test_threads_are_the_cores_less_the_workers_at_least_one(monkeypatch):
    monkeypatch.setattr(threads, "usable_cores", lambda: 4)
    assert plan_threads(0) == ThreadPlan(4, 0, 4)
    assert plan_threads(1).threads == 3 and plan_threads(4).threads == 1
    assert plan_threads(9).threads == 1
    assert plan_threads(1, processes=2).threads == 1  # two torchrun processes share 4 cores
    assert plan_threads(3, requested=6) == ThreadPlan(6, 3, 4, "--threads")  # --threads wins
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # torch's start-up count: not the policy's
    assert plan_threads(1).threads == 3
    assert str(plan_threads(1)) == "3 torch threads, 1 loader worker (4 usable cores)"
    assert str(plan_threads(0, 1)).startswith("1 torch thread, 0 loader workers")
    crowded = str(plan_threads(2, requested=8))  # an explicit count is kept, but said
    assert crowded == (
        "8 torch threads, 2 loader workers (4 usable cores, as --threads asks): "
        "more than the cores, they take turns"
    )
    assert "take turns" not in str(plan_threads(4, requested=1))  # never fewer than one
    for bad in (0, -2):
        with pytest.raises(ValueError, match="--threads"):
            plan_threads(0, requested=bad)
    before = torch.get_num_threads()
    with torch_threads(3) as count:
        assert count == torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_pretrain_trains_with_the_chosen_threads_and_restores_the_callers(
    dataset, tmp_path, monkeypatch
):
    monkeypatch.setattr(threads, "usable_cores", lambda: 3)
    seen: list[int] = []
    model = create_model("mae_vit_tiny")
    model.register_forward_pre_hook(lambda module, args: seen.append(torch.get_num_threads()))
    options = dict(
        shards=[str(dataset.root)], batch_size=4, workers=1, shuffle_buffer=8, shuffle_initial=4,
        model="mae_vit_tiny", out=str(tmp_path / "run"), steps=2, lr=1e-3, progress=False,
    )  # fmt: skip
    before = torch.get_num_threads()
    pretrain(config_from_options(options), model)
    assert set(seen) == {2} and torch.get_num_threads() == before  # 3 cores less 1 worker
    seen.clear()
    pretrain(
        config_from_options({**options, "out": str(tmp_path / "two"), "threads": 1}),
        model,
    )
    assert set(seen) == {1} and torch.get_num_threads() == before  # as --threads asks
    with pytest.raises(ValueError, match="--threads"):
        pretrain(config_from_options({**options, "out": str(tmp_path / "bad"), "threads": 0}))
    assert not (tmp_path / "bad").exists()


# ---------------------------------------------------------------- commands


def _checkpoint(dataset, tmp_path) -> Path:
    options = dict(
        shards=[str(dataset.root)], batch_size=4, workers=0, shuffle_buffer=8, shuffle_initial=4,
        model="mae_vit_tiny", out=str(tmp_path / "run"), steps=1, lr=1e-3, progress=False,
        threads=1,
    )  # fmt: skip
    return pretrain(config_from_options(options)).checkpoint


def test_each_torch_command_has_threads_and_says_them_first(
    dataset, tmp_path, ir_samples, monkeypatch
):
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    runner = CliRunner()
    for command in ("pretrain", "probe", "eval", "export", "visualize", "demo"):
        shown = runner.invoke(cli_main, [command, "--help"])
        assert "--threads" in shown.output and "--device" in shown.output, command
        if command != "pretrain":  # its options are its config's fields: refused below
            refused = runner.invoke(cli_main, [command, "--threads", "0"])
            assert refused.exit_code == 2 and "--threads" in refused.output, command

    checkpoint = _checkpoint(dataset, tmp_path)
    image = next((ir_samples / "sirst").rglob("*.png"))
    export = runner.invoke(cli_main, ["export", str(checkpoint), "--out", str(tmp_path / "e")])
    assert export.exit_code == 0, export.output
    assert export.output.startswith("export on cpu: 2 torch threads, 0 loader workers (2 usable")
    picture = runner.invoke(
        cli_main,
        ["visualize", str(checkpoint), "--image", str(image), "--out", str(tmp_path / "v.png"),
         "--threads", "1"],
    )  # fmt: skip
    assert picture.exit_code == 0, picture.output
    assert picture.output.startswith("visualize on cpu: 1 torch thread, 0 loader workers")
    assert "as --threads asks" in picture.output and (tmp_path / "v.png").is_file()

    empty = tmp_path / "empty"
    empty.mkdir()
    probe = ["probe", "--encoder", "scratch", "--data", str(empty), "--layout", "sirst", "--out",
             str(tmp_path / "p"), "--workers", "1", "--device", "cpu"]  # fmt: skip
    probed = runner.invoke(cli_main, probe)  # no images: fails after its opening line
    assert probed.exit_code == 1 and "Traceback" not in probed.output
    lines = probed.output.splitlines()
    assert lines[0] == "probe on cpu: 1 torch thread, 1 loader worker (2 usable cores)"
    assert len(lines) == 2 and lines[1].startswith("Error: "), probed.output

    run = ["pretrain", "--shards", str(dataset.root), "--model", "mae_vit_tiny", "--steps", "1",
           "--workers", "1", "--batch-size", "4", "--shuffle-buffer", "8", "--no-progress"]  # fmt: skip
    trained = runner.invoke(cli_main, [*run, "--out", str(tmp_path / "cli-run")])
    assert trained.exit_code == 0, trained.output
    assert trained.output.splitlines()[0] == (
        "pretrain on cpu: 1 torch thread, 1 loader worker (2 usable cores)"
    )
    refused = runner.invoke(cli_main, [*run, "--out", str(tmp_path / "r0"), "--threads", "0"])
    assert refused.exit_code == 1 and len(refused.output.strip().splitlines()) == 1
    assert "--threads 0" in refused.output and not (tmp_path / "r0").exists()


def test_the_opening_line_counts_the_workers_the_loader_starts(dataset, tmp_path, monkeypatch):
    for module in (
        threads,
        loader,
        train_module,
    ):  # the policy's, the loader's and the trainer's view
        monkeypatch.setattr(module, "usable_cores", lambda: 2)
    run = ["pretrain", "--shards", str(dataset.root), "--model", "mae_vit_tiny", "--steps", "1",
           "--workers", "6", "--batch-size", "4", "--shuffle-buffer", "8", "--no-progress",
           "--out", str(tmp_path / "run")]  # fmt: skip
    trained = CliRunner().invoke(cli_main, run)
    assert trained.exit_code == 0, trained.output
    # --workers 6 on 2 cores: the loader starts 2, and the line says 2 (it said 6)
    assert trained.output.splitlines()[0] == (
        "pretrain on cpu: 1 torch thread, 2 loader workers (2 usable cores)"
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_a_gpu_asked_for_without_one_is_one_line_in_every_command(dataset, tmp_path):
    for name in ("cuda", "gpu", "cuda:1", "gpu:0"):
        with pytest.raises(DeviceError, match="no CUDA GPU"):
            pick_device(name)
    with pytest.raises(DeviceError, match="choose auto, cpu, cuda"):
        pick_device("tpu")
    assert pick_device("auto") == torch.device("cpu") == pick_device("CPU")

    checkpoint = _checkpoint(dataset, tmp_path)
    data = tmp_path / "sirst"
    (data / "images").mkdir(parents=True)
    out = str(tmp_path / "out")
    commands = {
        "pretrain": ["--shards", str(dataset.root), "--model", "mae_vit_tiny", "--out", out],
        "probe": ["--encoder", "scratch", "--data", str(data), "--layout", "sirst", "--out", out],
        "eval": ["--encoder", "scratch", "--task", "small-target", "--data", str(data), "--out",
                 out],
        "export": [str(checkpoint), "--out", out],
        "visualize": [str(checkpoint), "--image", str(data), "--out", str(tmp_path / "v.png")],
        "demo": ["--out", out],
    }  # fmt: skip
    for command, args in commands.items():
        for device in ("cuda", "gpu"):
            result = CliRunner().invoke(cli_main, [command, *args, "--device", device])
            lines = result.output.strip().splitlines()
            assert result.exit_code == 1 and len(lines) == 1, (command, result.output)
            assert "no CUDA GPU" in lines[0] and "Traceback" not in result.output, command
        assert not Path(out).exists(), command  # refused before any work
