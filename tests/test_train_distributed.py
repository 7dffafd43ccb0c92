"""Data-parallel training with torchrun (gloo, two CPU processes) follows the single-process trajectory."""

import json
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import synthetic_nuclei
from sac.train import read_log


def write_folder_dataset(root, count=4):
    from PIL import Image

    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for index in range(count):
        image, labels = synthetic_nuclei(96, 10, seed=index)
        Image.fromarray(image).save(root / "images" / f"s{index}.png")
        Image.fromarray(labels.astype(np.uint16)).save(root / "masks" / f"s{index}.png")


def run(args, tmp_path):
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    write_folder_dataset(tmp_path / "data")
    config = {
        "datasets": ["folder"],
        "data_root": str(tmp_path / "data"),
        "image_size": 64,
        "generator_channels": 4,
        "generator_depth": 2,
        "num_points": 2,
        "batch_size": 4,
        "max_steps": 6,
        "warmup_steps": 2,
        "val_fraction": 0.25,
        "max_val_images": 1,
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    train = ["-m", "sac.cli", "train", "--config", str(tmp_path / "config.json"), "--out"]
    run([*train, str(tmp_path / "one")], tmp_path)
    launcher = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517"]
    run([*launcher, *train, str(tmp_path / "two")], tmp_path)
    one, two = read_log(tmp_path / "one" / "log.csv"), read_log(tmp_path / "two" / "log.csv")
    assert len(one) == len(two) >= 1
    for a, b in zip(one, two, strict=True):
        assert float(b["train_loss"]) == pytest.approx(float(a["train_loss"]), rel=1e-3)
    weights_one = load_file(tmp_path / "one" / "last" / "model.safetensors")
    weights_two = load_file(tmp_path / "two" / "last" / "model.safetensors")
    assert weights_one.keys() == weights_two.keys()
    for key, value in weights_one.items():
        np.testing.assert_allclose(weights_two[key], value, rtol=1e-3, atol=1e-4, err_msg=key)
