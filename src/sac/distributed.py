"""Thousands of images or several slides on a dask.distributed cluster, when one machine's run is too slow.

Every file is one task that runs the single-process code path (``predict_files`` for an image,
``segment_slides`` for a slide), so outputs are identical to a local run; each worker process loads the model
once and keeps it for all its tasks.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from sac.inference import predict_files, resolve_device
from sac.io import InputError
from sac.model import SegmentAnyCell, default_model_path, read_checkpoint_meta
from sac.wsi import segment_slides, split_slides

_MODELS: dict[tuple[str, str, str], SegmentAnyCell] = {}  # per worker process: (path, weights hash, device)


def predict_many(
    model_path: str | os.PathLike | None,
    inputs: Iterable[str | os.PathLike],
    out_dir: str | os.PathLike,
    workers: int | None = None,
    scheduler: str | None = None,
    device: str = "auto",
    wsi: bool = False,
    level: int = 0,
    progress: bool = True,
    **predict_options: Any,
) -> list[tuple[Path, str]]:
    """Segment files and folders into ``out_dir`` with one task per file; returns the skipped files.

    ``workers`` starts a local cluster of that many single-threaded processes; ``scheduler`` (an address such
    as ``tcp://host:8786``) joins a running cluster, whose workers must see the model, inputs and ``out_dir``
    at the same paths. Large TIFFs and SVS files (all files with ``wsi``) are streamed as slides at ``level``;
    ``predict_options`` are those of ``predict_files``.
    """
    if workers is not None and scheduler is not None:
        raise InputError("give a number of workers or a scheduler address, not both")
    if workers is not None and workers < 1:
        raise InputError(f"workers must be at least 1, got {workers}")
    try:
        from dask.distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise InputError(
            "distributed prediction needs dask.distributed: pip install 'segment-any-cell[distributed]'"
        ) from None
    images, slides = split_slides(inputs, force=wsi)
    model_dir = Path(model_path) if model_path is not None else default_model_path()
    read_checkpoint_meta(model_dir)  # a bad checkpoint fails here once, not in every task
    out_dir = Path(out_dir).absolute()
    tasks = [(path, False) for path in images] + [(path, True) for path in slides]
    with contextlib.ExitStack() as stack:
        cluster = scheduler or stack.enter_context(
            # silenced: shutdown races print tracebacks; task errors still reach us through the futures
            LocalCluster(
                n_workers=workers, threads_per_worker=1, dashboard_address=None, silence_logs=logging.CRITICAL
            )
        )
        client = stack.enter_context(Client(cluster))
        futures = [
            client.submit(
                _predict_path,
                str(model_dir.absolute()),
                device,
                path.absolute(),
                out_dir,
                slide,
                level,
                predict_options,
                pure=False,
            )
            for path, slide in tasks
        ]
        for _ in tqdm(as_completed(futures), total=len(futures), desc="sac predict", disable=not progress):
            pass
        # failures name the path as given, like a local run, rather than the absolute one the workers saw
        return [
            (path, message)
            for (path, _), future in zip(tasks, futures, strict=True)
            for _, message in future.result()
        ]


def _predict_path(
    model_path: str, device: str, path: Path, out_dir: Path, slide: bool, level: int, options: dict
) -> list[tuple[Path, str]]:
    """One file on a worker, through exactly the code a single-process run uses."""
    model = _cached_model(model_path, device)
    if slide:
        return segment_slides(model, [path], out_dir, level=level, progress=False, **options)
    return predict_files(model, [path], out_dir, progress=False, **options)


def _cached_model(model_path: str, device: str) -> SegmentAnyCell:
    """The worker's copy of the model; the weights' hash in the key notices a checkpoint rewritten in place."""
    key = (model_path, read_checkpoint_meta(Path(model_path))["weights_sha256"], device)
    if key not in _MODELS:
        _MODELS[key] = SegmentAnyCell.load(model_path, device=resolve_device(device)).prepare_for_inference()
    return _MODELS[key]
