import hashlib

import pytest

from sac import download
from sac.cli import main
from sac.io import InputError


def test_fetch_downloads_verifies_and_caches(tmp_path, monkeypatch):
    payload = b"official weights stand-in"
    served = tmp_path / "server"
    served.mkdir()
    (served / "sam_vit_b_01ec64.pth").write_bytes(payload)
    monkeypatch.setenv("SAC_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(
        download.OFFICIAL_CHECKPOINTS, "vit_b", ("sam_vit_b_01ec64.pth", hashlib.sha256(payload).hexdigest())
    )
    path = download.fetch_checkpoint("vit_b", base_url=served.as_uri() + "/", progress=False)
    assert path.read_bytes() == payload and path.parent == tmp_path / "cache"
    assert download.fetch_checkpoint("vit_b", base_url="http://unused.invalid/") == path


def test_wrong_hash_leaves_nothing_behind(tmp_path, monkeypatch):
    served = tmp_path / "server"
    served.mkdir()
    (served / "sam_vit_l_0b3195.pth").write_bytes(b"corrupted")
    monkeypatch.setenv("SAC_CACHE", str(tmp_path / "cache"))
    with pytest.raises(InputError, match="does not match"):
        download.fetch_checkpoint("vit_l", base_url=served.as_uri() + "/", progress=False)
    assert list((tmp_path / "cache").iterdir()) == []


def test_no_network_message_tells_where_to_place_the_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SAC_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(download, "DOWNLOAD_ROOT", (tmp_path / "missing").as_uri() + "/")
    monkeypatch.setattr(download.fetch_checkpoint, "__defaults__", (download.DOWNLOAD_ROOT, False))
    assert main(["weights", "fetch", "vit_h"]) == 2
    message = capsys.readouterr().err.strip()
    assert "place it at" in message and "sam_vit_h_4b8939.pth" in message and "\n" not in message
