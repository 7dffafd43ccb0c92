"""Thousands of images or several slides on a dask.distributed cluster, when one machine's run is too slow.

Every file is one task that runs the single-process code path (``sac.pipeline.segment_file``), so outputs are
identical to a local run; each worker process loads the model once and keeps it for all its tasks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

from tqdm import tqdm

from sac.io import InputError
from sac.model import model_path, read_checkpoint_meta
from sac.options import SegmentOptions
from sac.pipeline import FoundInput, Outcome, RunOptions, RunRecord, check_run, report_skipped, segment_file
from sac.segmenter import Segmenter

_SEGMENTERS: dict[tuple[str, str, str], Segmenter] = {}  # per worker process: (path, weights hash, device)


def predict_many(
    model: str | os.PathLike | None,
    inputs: str | os.PathLike | Iterable[str | os.PathLike],
    out_dir: str | os.PathLike,
    options: SegmentOptions,
    run: RunOptions | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    device: str = "auto",
    progress: bool = True,
) -> list[tuple[Path, str]]:
    """Segment files and folders into ``out_dir`` with one task per file; returns the skipped files.

    ``workers`` starts a local cluster of that many single-threaded processes; ``scheduler`` (an address such
    as ``tcp://host:8786``) joins a running cluster, whose workers must see the model, inputs and ``out_dir``
    at the same paths. ``options`` and ``run`` are those of ``sac.pipeline.segment_files``.
    """
    run = run or RunOptions()
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
    found = check_run(inputs, out_dir, run, options)
    model_dir = model_path(model)
    meta = read_checkpoint_meta(model_dir)  # a bad checkpoint fails here once, not in every task
    out_dir = Path(out_dir).absolute()

    def outcomes(items: list[FoundInput]) -> Iterator[Outcome]:
        with contextlib.ExitStack() as stack:
            cluster = scheduler or stack.enter_context(
                # silenced: shutdown races print tracebacks; task errors still reach us through the futures
                LocalCluster(
                    n_workers=workers,
                    threads_per_worker=1,
                    dashboard_address=None,
                    silence_logs=logging.CRITICAL,
                )
            )
            client = stack.enter_context(Client(cluster))
            futures = [
                client.submit(
                    _segment_path,
                    str(model_dir.absolute()),
                    device,
                    options,
                    item._replace(path=item.path.absolute()),
                    out_dir,
                    run,
                    pure=False,
                )
                for item in items
            ]
            submitted = {future.key: item for future, item in zip(futures, items, strict=True)}
            for future in as_completed(futures):
                row, message = future.result()
                # named by the path as given, like a local run, not the absolute one the workers saw
                item = submitted[future.key]
                if row is not None and progress:  # each image's scale line, as a local run prints it
                    tqdm.write(f"sac: {item.path.name}: {row['scale']}", file=sys.stderr)
                yield item, row if row is not None else message

    return RunRecord(out_dir, meta, options, run).run(found, outcomes, progress)


def _segment_path(
    model_dir: str,
    device: str,
    options: SegmentOptions,
    item: FoundInput,
    out_dir: Path,
    run: RunOptions,
) -> tuple[dict | None, str | None]:
    """One file on a worker, through exactly the code a single-process run uses: (its summary row, or its
    failure message)."""
    key = (model_dir, read_checkpoint_meta(Path(model_dir))["weights_sha256"], device)
    if key not in _SEGMENTERS:  # the weights' hash in the key notices a checkpoint rewritten in place
        _SEGMENTERS[key] = Segmenter.load(model_dir, device)
    try:
        segmenter = _SEGMENTERS[key].with_options(**dataclasses.asdict(options))
        return segment_file(segmenter, item, out_dir, run, progress=False), None
    except InputError as error:
        return None, report_skipped(item.path, error)[1]
