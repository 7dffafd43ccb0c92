"""The command line's own behaviour: version, help defaults, flag forms, output checks before any work."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from conftest import synthetic_nuclei
from sac import __version__
from sac.cli import build_parser, main
from sac.model import model_path, read_checkpoint_meta


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "cell.png"
    Image.fromarray(synthetic_nuclei(64, 5)[0]).save(path)
    return path


def test_version_and_defaults_in_help(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"sac {__version__}"
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 0.5)" in text and "(default: auto)" in text
    for name in ("nuclei", "glands"):  # the help states the shipped models' own settings
        shipped = read_checkpoint_meta(model_path(name))["model"]
        for setting in ("seed_threshold", "seed_depth", "min_size"):
            assert f"{name} {shipped[setting]:g}" in text, setting
    assert f"nuclei {read_checkpoint_meta(model_path('nuclei'))['model']['hv_weight']:g})" in text


def test_a_mistyped_option_is_one_line(capsys):
    with pytest.raises(SystemExit) as done:
        main(["predict", "x.png", "-o", "out", "--threshold", "abc"])
    err = capsys.readouterr().err
    assert done.value.code == 2 and err.count("\n") == 1
    assert err.startswith("sac predict: error: argument --threshold: invalid float value: 'abc'")


@pytest.mark.parametrize("flag", ["--instances", "--tta"])
def test_a_flag_with_an_optional_value_followed_by_the_input(flag, tiny_checkpoint, image, tmp_path):
    """``--instances img.png``, ``--tta img.png``: the file is an input and the flag takes its own default."""
    out = tmp_path / "out"
    argv = [
        "predict",
        "--instances",
        "fast",
        flag,
        str(image),
        "-o",
        str(out),
        "--model",
        str(tiny_checkpoint),
    ]
    assert main(argv) == 0
    assert (out / "cell_labels.tif").is_file()
    recorded = json.loads((out / "sac_run.json").read_text())["options"]
    assert (recorded["instances"], recorded["tta"]) == ("fast", 8 if flag == "--tta" else None)


def test_seed_depth_flag_is_checked_first_and_recorded(tiny_checkpoint, image, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    argv = ["predict", str(image), "-o", str(out), "--model", str(tiny_checkpoint), "--instances"]
    loads = []
    with monkeypatch.context() as patch:
        patch.setattr("sac.segmenter.Segmenter.load", lambda *a, **k: loads.append(1))
        assert main([*argv, "--seed-depth", "1.5"]) == 2
    error = capsys.readouterr().err
    assert (
        "seed depth must be in [0, 1), got 1.5" in error
        and len(error.strip().splitlines()) == 1
        and not loads
    )
    assert main([*argv, "--seed-depth", "0.1"]) == 0
    assert json.loads((out / "sac_run.json").read_text())["options"]["seed_depth"] == 0.1


def test_ome_tif_outputs_are_named_without_ome(tiny_checkpoint, tmp_path):
    import tifffile

    tifffile.imwrite(tmp_path / "scan.ome.tif", synthetic_nuclei(64, 5)[0], photometric="rgb")
    out = tmp_path / "out"
    assert (
        main(["predict", str(tmp_path / "scan.ome.tif"), "-o", str(out), "--model", str(tiny_checkpoint)])
        == 0
    )
    assert (out / "scan_mask.png").is_file()


def test_recursive_folders(tiny_checkpoint, image, tmp_path):
    (tmp_path / "nested" / "deeper").mkdir(parents=True)
    image.rename(tmp_path / "nested" / "deeper" / "cell.png")
    argv = ["predict", str(tmp_path / "nested"), "-o", str(tmp_path / "out"), "--model", str(tiny_checkpoint)]
    assert main(argv) == 2  # the top folder holds no image itself
    assert main([*argv, "--recursive"]) == 0 and (tmp_path / "out" / "deeper" / "cell_mask.png").is_file()
    # same-named files of different subfolders: their outputs keep apart in the same subfolders of the output
    (tmp_path / "nested" / "other").mkdir()
    (tmp_path / "nested" / "other" / "cell.png").write_bytes(
        (tmp_path / "nested" / "deeper" / "cell.png").read_bytes()
    )
    assert main([*argv, "--recursive", "--instances"]) == 0
    assert all((tmp_path / "out" / sub / "cell_labels.tif").is_file() for sub in ("deeper", "other"))
    with open(tmp_path / "out" / "sac_summary.csv", newline="") as handle:
        assert [row["image"] for row in csv.DictReader(handle)] == ["deeper/cell.png", "other/cell.png"]
    for sub in (
        "deeper",
        "other",
    ):  # the nuclei tables name the image as the summary does, so they can be joined
        with open(tmp_path / "out" / sub / "cell_nuclei.csv", newline="") as handle:
            assert {row["image"] for row in csv.DictReader(handle)} <= {f"{sub}/cell.png"}


@pytest.mark.parametrize("kind", ["file", "unwritable"])
def test_bad_output_folder_fails_before_any_work(tiny_checkpoint, image, tmp_path, capsys, kind, monkeypatch):
    target = tmp_path / "out"
    if kind == "file":
        target.write_text("not a folder")
    else:
        target.mkdir()
        monkeypatch.setattr("os.access", lambda *_: False)
    loads = []
    monkeypatch.setattr("sac.segmenter.Segmenter.load", lambda *a, **k: loads.append(1))
    assert main(["predict", str(image), "-o", str(target), "--model", str(tiny_checkpoint)]) == 2
    error = capsys.readouterr().err
    assert str(target) in error and len(error.strip().splitlines()) == 1 and not loads


def test_evaluate_json_into_a_folder_and_train_out_a_file_are_refused(tmp_path, capsys):
    (tmp_path / "report").mkdir()
    assert main(["evaluate", "--dataset", "samples", "--json", str(tmp_path / "report")]) == 2
    assert "is a folder" in capsys.readouterr().err
    (tmp_path / "run").write_text("")
    assert (
        main(["train", "--dataset", "folder", "--data-root", str(tmp_path), "--out", str(tmp_path / "run")])
        == 2
    )
    assert "not a folder" in capsys.readouterr().err


def test_an_interrupted_training_says_how_to_resume(tmp_path, capsys, monkeypatch):
    def interrupted(config, progress=True):
        raise KeyboardInterrupt  # Ctrl-C

    monkeypatch.setattr("sac.train.train", interrupted)
    assert (
        main(["train", "--dataset", "folder", "--data-root", str(tmp_path), "--out", str(tmp_path / "r")])
        == 130
    )
    assert f"sac train --resume {tmp_path / 'r'}` continues" in capsys.readouterr().err


def test_resume_says_which_flags_it_ignores(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path), "--lr", "0.1", "--dataset", "monuseg"]) == 2
    err = capsys.readouterr().err
    assert "ignoring --dataset, --lr" in err and "not a SAC training run" in err


def test_init_defaults_to_the_fine_tuning_learning_rate():
    from sac.train import FINE_TUNE_LR, TrainConfig

    assert TrainConfig.from_dict({"init": "nuclei"}).lr == FINE_TUNE_LR
    assert TrainConfig.from_dict({"init": "nuclei", "lr": 0.01}).lr == 0.01
    assert TrainConfig.from_dict({}).lr != FINE_TUNE_LR


def test_evaluate_takes_instances_with_or_without_a_mode_as_predict_does():
    parse = build_parser().parse_args
    assert parse(["evaluate", "--dataset", "samples", "--instances"]).instances == "fast"
    assert parse(["evaluate", "--dataset", "samples", "--instances", "sam"]).instances == "sam"


def test_evaluate_folder_needs_an_existing_data_root_and_an_unknown_model_names_the_shipped_ones(
    tmp_path, capsys
):
    assert main(["evaluate", "--dataset", "folder"]) == 2
    assert "needs its folder" in capsys.readouterr().err
    assert main(["evaluate", "--dataset", "folder", "--data-root", str(tmp_path / "nowhere")]) == 2
    assert "nowhere: no such file or folder" in capsys.readouterr().err
    assert main(["evaluate", "--dataset", "samples", "--model", str(tmp_path / "nosuch")]) == 2
    assert "no such model; shipped models: nuclei, glands" in capsys.readouterr().err


def test_evaluate_prints_its_header_and_the_metric_legend(tiny_checkpoint, capsys):
    assert main(["evaluate", "--dataset", "samples", "--model", str(tiny_checkpoint), "--limit", "1"]) == 0
    out = capsys.readouterr().out
    assert (
        out.startswith("sac evaluate: model")
        and "dataset samples, split test, 1 image, instances fast" in out
        and "TTA off" in out
    )
    assert "PQ = DQ x SQ" in out and "IoU above 0.5 (PQ's rule)" in out


def test_binary_mask_is_split_with_a_warning_for_evaluation(tiny_checkpoint, tmp_path, capsys):
    folder = tmp_path / "data"
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    image, labels = synthetic_nuclei(96, 3, seed=3)  # even a few nuclei: a small crop's binary mask
    Image.fromarray(image).save(folder / "images" / "a.png")
    Image.fromarray(np.where(labels > 0, 255, 0).astype(np.uint8)).save(folder / "masks" / "a.png")
    argv = ["evaluate", "--dataset", "folder", "--data-root", str(folder), "--model", str(tiny_checkpoint)]
    with pytest.warns(UserWarning, match="binary mask, one instance per piece"):
        assert (
            main([*argv, "-o", str(tmp_path / "r.json")]) == 0
        )  # -o as in predict, train and pack; or --json
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["summary"]["n_images"] == 1


def test_each_image_line_says_when_maps_are_averaged(tiny_checkpoint, image, tmp_path, capsys):
    args = ["predict", str(image), "-o", str(tmp_path / "out"), "--model", str(tiny_checkpoint)]
    assert main(args) == 0 and "(TTA)" not in capsys.readouterr().err
    assert main([*args[:3], str(tmp_path / "tta"), *args[4:], "--tta"]) == 0
    assert "maps averaged over 8 views (TTA)" in capsys.readouterr().err
    assert main([*args[:3], str(tmp_path / "tta2"), *args[4:], "--tta", "2"]) == 0
    assert "maps averaged over 2 views (TTA)" in capsys.readouterr().err
    assert main([*args[:3], str(tmp_path / "tta3"), *args[4:], "--tta", "3"]) == 2
    assert "takes 1, 2, 4, 8 views; got 3" in capsys.readouterr().err
