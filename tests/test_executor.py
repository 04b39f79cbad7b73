"""Steps as a graph, and the Ray executor on a local Ray instance: the same artifacts as the serial
executor, a killed worker retried and resumed, a failed step stopping only its dependents."""
import json
import os
import signal
import threading
import time

import numpy as np
import pytest
import torch

from src.core.errors import DataError
from src.orchestration.execution import run_graph
from src.orchestration.recipes import load_recipe, plan
from src.orchestration.steps import OutputLedger, Step, dependencies
from src.pipeline import main

RECIPE = """
name = "{name}"
[data]
dir = "{root}/data"
synthetic = {{ cases = 3, seed = 1, test_cases = 1, sizes = "64x64", slices = "10", workers = 1 }}
[folds]
n_folds = 2
out = "{root}/folds.csv"
{models}
[[models]]
name = "m"
stage = "seg2d"
arch = "unet_tiny"
folds = [0, 1]
epochs = 3
img_size = 64
batch_size = 4
workers = 0
device = "cpu"
augment = "none"
[ensemble]
passes = 0
holdout_folds = "none"
workers = 1
[submit]
out = "{root}/{name}.csv"
device = "cpu"
[report]
enabled = false
"""
BAD = """[[models]]
name = "bad"
stage = "seg2d"
arch = "unet_tiny"
folds = [0]
epochs = 1
img_size = 64
device = "cpu"
encoder_weights = "{root}/missing.pth"
"""


def write_recipe(root, name, models=""):
    path = root / f"{name}.toml"
    path.write_text(RECIPE.format(root=root, name=name, models=models.format(root=root)))
    return path


def test_steps_wait_for_the_steps_whose_outputs_they_read(tmp_path):
    steps = plan(load_recipe(write_recipe(tmp_path, "g")), str(tmp_path / "runs"))
    deps = dependencies(steps)
    assert deps["folds"] == {"synthetic data"} and deps["cache"] == {"synthetic data"}
    assert deps["train m fold 0"] == {"folds", "cache"} and deps["ensemble"] == {"train m fold 0", "train m fold 1"}
    assert deps["submission"] == {"ensemble"} and deps["score"] == {"submission"}
    assert steps[3].log.endswith("runs/m/fold0.log") and steps[-1].log.endswith(f"logs/g/{steps[-1].name}.log")
    twin = Step("twin", "src.train", (), steps[3].outputs)
    with pytest.raises(DataError, match="both write"):
        dependencies([steps[3], twin])


@pytest.fixture(scope="module")
def ray_instance():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def serial(tmp_path_factory):
    """The recipe run by the serial executor, one thread (as each Ray task gets)."""
    root = tmp_path_factory.mktemp("executor")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        main([str(write_recipe(root, "s")), "--runs-dir", str(root / "runs_s")])
    finally:
        torch.set_num_threads(threads)
    return root


def weights(path):
    return torch.load(path, weights_only=True)["model"]


def same_weights(a, b):
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_ray_runs_the_recipe_as_the_serial_executor_does(serial, ray_instance, capsys):
    main([str(write_recipe(serial, "r")), "--runs-dir", str(serial / "runs_r"), "--executor", "ray"])
    out = capsys.readouterr().out
    for fold in (0, 1):
        a, b = serial / "runs_s" / "m" / f"fold{fold}", serial / "runs_r" / "m" / f"fold{fold}"
        assert same_weights(a / "best.pt", b / "best.pt")
        oof = sorted(p.relative_to(a) for p in (a / "oof").rglob("*") if p.is_file())
        assert oof and oof == sorted(p.relative_to(b) for p in (b / "oof").rglob("*") if p.is_file())
        assert all(np.array_equal(np.load(a / p), np.load(b / p)) for p in oof if p.suffix == ".npy")
        assert "epoch 3/3: train loss" in (serial / "runs_r" / "m" / f"fold{fold}.log").read_text()
    scores = [json.loads((serial / f"runs_{n}" / f"ensemble_{n}.json").read_text())["scores"]["plain_mean"]
              for n in ("s", "r")]
    assert scores[0] == scores[1]
    assert "slowest running: train m fold" in out  # the two trainings ran at once


def test_a_killed_worker_is_retried_and_the_training_resumes(serial, ray_instance):
    psutil = pytest.importorskip("psutil")
    from src.orchestration.ray_executor import RayExecutor

    runs = serial / "runs_k"
    [step] = [s for s in plan(load_recipe(write_recipe(serial, "r")), str(runs)) if s.name == "train m fold 0"]
    staging_last = runs / "m" / "fold0.staging" / "last.pt"
    killed = []

    def kill_the_worker_after_one_epoch():
        while not staging_last.exists():
            time.sleep(0.02)
        for proc in psutil.process_iter(["cmdline"]):
            cmd = proc.info["cmdline"] or []
            if "src.train" in cmd and str(runs) in cmd:
                killed.append(proc.ppid())
                os.kill(proc.ppid(), signal.SIGKILL)  # the Ray worker; its training dies with it
                return

    killer = threading.Thread(target=kill_the_worker_after_one_epoch)
    killer.start()
    rows = run_graph([step], OutputLedger(), RayExecutor())
    killer.join()
    assert killed and rows[0][1] == "ran"
    attempts = (runs / "m" / "fold0.log").read_text().split("$ ")[1:]
    assert len(attempts) == 2 and "epoch 1/3" in attempts[0] and "epoch 1/3" not in attempts[1]  # resumed
    assert same_weights(runs / "m" / "fold0" / "best.pt", serial / "runs_s" / "m" / "fold0" / "best.pt")


def test_a_failed_step_stops_its_dependents_and_a_rerun_runs_only_the_rest(serial, ray_instance, capsys):
    recipe = write_recipe(serial, "f", BAD)
    runs = str(serial / "runs_f")
    with pytest.raises(DataError) as failure:
        main([str(recipe), "--runs-dir", runs, "--executor", "ray"])
    message = str(failure.value)
    assert message.startswith("step 'train bad fold 0' failed (exit code 2): error: ") and "missing.pth" in message
    assert f"log: {runs}/bad/fold0.log" in message and "step(s) not run" in message and "\n" not in message
    assert (serial / "runs_f" / "m" / "fold1" / "done.json").exists()  # independent steps finished
    assert not (serial / "runs_f" / "ensemble_f.json").exists()
    capsys.readouterr()
    recipe.write_text(recipe.read_text().replace("encoder_weights = ", "# encoder_weights = "))
    main([str(recipe), "--runs-dir", runs, "--executor", "ray"])
    out = capsys.readouterr().out
    ran = [line.split()[0] for line in out.splitlines() if line.startswith("  ") and " ran " in line]
    assert "train m fold 0: up to date, skipped" in out and "train m fold 1: up to date, skipped" in out
    assert ran == ["cache", "train", "ensemble", "submission", "score"]


def test_ablation_cells_as_ray_tasks_are_skipped_once_scored(serial, ray_instance):
    from src.research.ablation import AblationOptions, run_ablation

    base = ("--arch", "unet_tiny", "--img-size", "64", "--epochs", "1", "--batch-size", "4", "--device", "cpu",
            "--workers", "0", "--augment", "none", "--data-dir", str(serial / "data"))
    opts = AblationOptions(base=base, repeats=2, out=str(serial / "ablation"), executor="ray")
    lines = []
    run_ablation(opts, log=lines.append)
    assert len(lines) == 2 and all("trained in" in line for line in lines)
    assert all("epoch 1/1" in p.read_text() for p in (serial / "ablation" / "logs").glob("*.log"))
    again = []
    run_ablation(opts, log=again.append)
    assert len(again) == 2 and all("finished earlier" in line for line in again)
