"""Official SAM checkpoints in the user cache: download with progress and sha256 verification."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

from sac.io import InputError, atomic_write, sha256sum
from sac.progress import progress_bar

DOWNLOAD_ROOT = "https://dl.fbaipublicfiles.com/segment_anything/"

# Official checkpoint files: file name, sha256.
OFFICIAL_CHECKPOINTS: dict[str, tuple[str, str]] = {
    "vit_b": ("sam_vit_b_01ec64.pth", "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912"),
    "vit_l": ("sam_vit_l_0b3195.pth", "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622"),
    "vit_h": ("sam_vit_h_4b8939.pth", "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e"),
}


def cache_dir() -> Path:
    """``$SAC_CACHE``, else ``$XDG_CACHE_HOME/sac``, else ``~/.cache/sac``."""
    if os.environ.get("SAC_CACHE"):
        return Path(os.environ["SAC_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sac"


def checkpoint_path(name: str) -> Path:
    """Where the official checkpoint ``name`` (vit_b, vit_l, vit_h) lives in the cache."""
    if name not in OFFICIAL_CHECKPOINTS:
        raise InputError(
            f"unknown official checkpoint {name!r}; choose one of {', '.join(OFFICIAL_CHECKPOINTS)}"
        )
    return cache_dir() / OFFICIAL_CHECKPOINTS[name][0]


def fetch_checkpoint(name: str, base_url: str = DOWNLOAD_ROOT, progress: bool = True) -> Path:
    """Return the verified cached checkpoint, downloading it first when absent."""
    path = checkpoint_path(name)
    filename, expected = OFFICIAL_CHECKPOINTS[name]
    if path.is_file():
        verify_checkpoint(path, expected)
        return path
    url = base_url + filename
    try:
        with urllib.request.urlopen(url, timeout=30) as response, atomic_write(path) as tmp:
            total = int(response.headers.get("Content-Length") or 0) or None
            with (
                open(tmp, "wb") as out,
                progress_bar(None, progress, total=total, unit="B", unit_scale=True, desc=filename) as bar,
            ):
                for block in iter(lambda: response.read(1 << 20), b""):
                    out.write(block)
                    bar.update(len(block))
            verify_checkpoint(tmp, expected, shown_as=url)
    except (urllib.error.URLError, OSError) as error:
        raise InputError(
            f"cannot download {url} ({getattr(error, 'reason', error)}); without network, download it elsewhere and "
            f"place it at {path} (sha256 {expected})"
        ) from None
    return path


def verify_checkpoint(path: Path, expected: str, shown_as: str | None = None) -> None:
    """Refuse a file whose sha256 is not ``expected`` (a truncated or tampered download), naming it as ``shown_as``."""
    actual = sha256sum(path)
    if actual != expected:
        raise InputError(
            f"{shown_as or path}: sha256 {actual} does not match the official {expected}; delete and fetch again"
        )
