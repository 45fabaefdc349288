"""Eden downloads against a real local HTTP server serving zips in Eden's layouts with real leaf photos."""

from __future__ import annotations

import socket
import threading
from pathlib import Path
from typing import Iterator, Optional

import pytest

from tests.eden_server import EdenServer, serve, url_path, zip_bytes
from toptune_core.data.eden import (EDEN_CATALOGUE, CombinedProgress, DownloadError, download_eden_dataset,
                                    download_eden_datasets, eden_label, eden_url)
from toptune_core.data.eden_catalogue import EDEN_PRESETS, LAYOUTS, describe_name, find, search
from toptune_core.errors import Cancelled

REPO = Path(__file__).resolve().parent.parent
_DEMO = REPO / "demo_data" / "ibean_leaf_disease"
PHOTOS = _DEMO if _DEMO.is_dir() else Path("/work/shared/datasets/ibean_leaf_disease")

OLD = "Black nightsade-220519-Weed-zz-V1-20210225102034"  # images directly in the folder + metadata
NEW = "Cucumber-Cucumis_sativus-Healthy-PRX-RGB-NA-20210607"  # images in images/


def photos(cls: str, n: int = 4) -> list[bytes]:
    found = sorted((PHOTOS / cls).glob("*.jpg"))[:n]
    assert len(found) == n, f"need {n} photos in {PHOTOS / cls}"
    return [p.read_bytes() for p in found]


OLD_FILES = {f"DSC_{1000 + i}.JPG": b for i, b in enumerate(photos("bean_rust"))}
OLD_FILES["metadata.txt"] = b"species: Solanum nigrum\ncamera: Nikon D3400\n"
NEW_FILES = {f"images/IMG_{i:04d}.jpg": b for i, b in enumerate(photos("healthy"))}
# Old-style zip holds the dataset folder itself; new-style zip holds images/ at the top.
OLD_ZIP = zip_bytes({f"{OLD}/{k}": v for k, v in OLD_FILES.items()} | {f"__MACOSX/{OLD}/._DSC_1000.JPG": b"x"})
NEW_ZIP = zip_bytes(NEW_FILES)


Server = EdenServer


@pytest.fixture
def server() -> Iterator[EdenServer]:
    with serve() as state:
        state.serve_zip(OLD, OLD_ZIP)
        state.serve_zip(NEW, NEW_ZIP)
        yield state


def files_under(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_catalogue_lists_every_dataset_of_edens_notebooks_with_its_class() -> None:
    names = [d.name for d in EDEN_CATALOGUE]
    assert len(names) >= 26 and len(names) == len(set(names))
    assert OLD in names and NEW in names
    assert {d.layout for d in EDEN_CATALOGUE} == set(LAYOUTS) == {"old", "new", "2023"}
    for d in EDEN_CATALOGUE:
        assert d.label == eden_label(d.name) == d.name.split("-")[0].strip() and d.crop and d.condition
        assert d.notebook.endswith(".ipynb")
    assert eden_label(OLD) == "Black nightsade" and eden_label(NEW) == "Cucumber"
    assert eden_label(" Velvet leaf -220519-Weed") == "Velvet leaf"
    assert eden_url(OLD) == ("https://api.edenlibrary.ai/datasets/"
                             "Black%20nightsade-220519-Weed-zz-V1-20210225102034.zip")
    # the shipped copy is the project's catalogue (CI has shared/ beside the repository)
    shared = REPO.parent / "shared" / "datasets" / "eden_catalogue.csv"
    if shared.is_file():
        from toptune_core.data.eden_catalogue import CATALOGUE_FILE
        assert CATALOGUE_FILE.read_text() == shared.read_text()


def test_catalogue_search_and_the_top_tuning_preset() -> None:
    crops = {d.crop for d in search("weed")}
    assert crops == {"Black nightshade", "Velvet leaf"}
    assert [d.condition for d in search("tomato potassium")] == ["Potassium deficiency"]
    assert {d.crop for d in search("DEFICIENCY")} == {"Tomato", "Orange tree"}
    assert len(search("")) == len(EDEN_CATALOGUE) and search("no such crop") == []
    preset = EDEN_PRESETS["top-tuning"]
    assert preset.title == "Eden's top-tuning notebook"
    assert sorted(find(n).crop for n in preset.names) == ["Cucumber", "Processing tomato", "Tomato", "Watermelon"]
    assert {find(n).layout for n in preset.names} == {"new"}
    assert len({eden_label(n) for n in preset.names}) == 4, "four datasets, four classes"
    assert describe_name(NEW) == "Cucumber · Healthy → class 'Cucumber'"
    assert describe_name("Kale-010101-Healthy-zz") == "Kale-010101-Healthy-zz", "a typed name reads as typed"


def test_combined_progress_adds_datasets_up() -> None:
    events: list[tuple[int, Optional[int], float]] = []
    combined = CombinedProgress(["a", "b", "c"], lambda d, t, r: events.append((d, t, r)))
    a, b = combined.for_dataset("a"), combined.for_dataset("b")
    a(100, 1000, 0.0)  # resumed: 100 bytes were there before
    b(0, 500, 0.0)
    assert events[-1][:2] == (100, None), "the total is unknown until every dataset has reported"
    combined.finished("c")  # c was in the cache
    a(600, 1000, 0.0)
    b(500, 500, 0.0)
    assert events[-1][:2] == (1100, 1500) and events[-1][2] > 0
    assert [d for d, _, _ in events] == sorted(d for d, _, _ in events)


def test_download_old_style_with_progress(server: Server, tmp_path: Path) -> None:
    events: list[tuple[int, Optional[int], float]] = []
    folder = download_eden_dataset(OLD, tmp_path, base_url=server.base_url,
                                   progress=lambda d, t, r: events.append((d, t, r)))
    assert folder == tmp_path / "eden" / OLD
    assert files_under(folder) == OLD_FILES  # not nested twice, no __MACOSX
    done = [d for d, _, _ in events]
    assert done == sorted(done) and done[-1] == len(OLD_ZIP)
    assert all(t == len(OLD_ZIP) for _, t, _ in events) and all(r >= 0 for _, _, r in events)
    assert sorted(p.name for p in (tmp_path / "downloads").iterdir() if not p.name.endswith(".lock")) == [f"{OLD}.zip"]
    assert [p.name for p in (tmp_path / "eden").iterdir()] == [OLD], "no temporary folders may be left"


def test_download_new_style_keeps_images_folder(server: Server, tmp_path: Path) -> None:
    folder = download_eden_dataset(NEW, tmp_path, base_url=server.base_url)
    assert folder == tmp_path / "eden" / NEW
    assert files_under(folder) == NEW_FILES


def test_cache_hit_makes_no_request(server: Server, tmp_path: Path) -> None:
    first = download_eden_dataset(OLD, tmp_path, base_url=server.base_url)
    assert len(server.requests) == 1
    again = download_eden_dataset(OLD, tmp_path, base_url=server.base_url,
                                  progress=lambda *a: pytest.fail("no progress on a cache hit"))
    assert again == first and len(server.requests) == 1
    # works offline too
    assert download_eden_dataset(OLD, tmp_path, base_url="http://127.0.0.1:9/") == first


def _one_line(e: BaseException) -> str:
    msg = str(e)
    assert "\n" not in msg and msg.endswith(".")
    return msg


def test_404_is_a_clear_download_error(server: Server, tmp_path: Path) -> None:
    name = "Nothing-010101-Healthy-zz-V1-20210101000000"
    with pytest.raises(DownloadError) as info:
        download_eden_dataset(name, tmp_path, base_url=server.base_url)
    msg = _one_line(info.value)
    assert f"'{name}'" in msg and eden_url(name, server.base_url) in msg and "HTTP 404" in msg
    assert not (tmp_path / "eden" / name).exists()


def test_unreachable_server_says_offline(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DownloadError) as info:
        download_eden_dataset(OLD, tmp_path, base_url=f"http://127.0.0.1:{port}/datasets/", timeout=5)
    msg = _one_line(info.value)
    assert msg.startswith(f"Could not download Eden dataset '{OLD}' from http://127.0.0.1:{port}/")
    assert "offline" in msg and "demo dataset" in msg
    assert not (tmp_path / "eden" / OLD).exists()


def test_truncated_zip_is_rejected(server: Server, tmp_path: Path) -> None:
    server.files[url_path(OLD)] = OLD_ZIP[: len(OLD_ZIP) // 2]  # served complete, but only half a zip
    with pytest.raises(DownloadError, match="not a valid zip") as info:
        download_eden_dataset(OLD, tmp_path, base_url=server.base_url)
    _one_line(info.value)
    assert not (tmp_path / "eden" / OLD).exists()
    assert [p.name for p in (tmp_path / "downloads").iterdir() if not p.name.endswith(".lock")] == []


def test_corrupt_zip_is_rejected_and_deleted(server: Server, tmp_path: Path) -> None:
    bad = bytearray(OLD_ZIP)
    bad[len(bad) // 3] ^= 0xFF  # inside a stored JPEG: CRC mismatch found while extracting
    server.files[url_path(OLD)] = bytes(bad)
    with pytest.raises(DownloadError, match="was rejected: .*damaged.*CRC") as info:
        download_eden_dataset(OLD, tmp_path, base_url=server.base_url)
    _one_line(info.value)
    assert [p.name for p in (tmp_path / "eden").iterdir()] == []
    assert [p.name for p in (tmp_path / "downloads").iterdir() if not p.name.endswith(".lock")] == []
    # once the server is fixed, the next try downloads again and succeeds
    server.files[url_path(OLD)] = OLD_ZIP
    assert files_under(download_eden_dataset(OLD, tmp_path, base_url=server.base_url)) == OLD_FILES


def test_interrupted_download_is_never_used_and_resumes(server: Server, tmp_path: Path) -> None:
    path = url_path(OLD)
    server.cut_after[path] = len(OLD_ZIP) // 2
    with pytest.raises(DownloadError, match="stopped after") as info:
        download_eden_dataset(OLD, tmp_path, base_url=server.base_url)
    _one_line(info.value)
    part = tmp_path / "downloads" / f"{OLD}.zip.part"
    assert part.stat().st_size == len(OLD_ZIP) // 2
    assert not (tmp_path / "eden" / OLD).exists() and not part.with_suffix("").exists()

    del server.cut_after[path]
    events: list[int] = []
    folder = download_eden_dataset(OLD, tmp_path, base_url=server.base_url, progress=lambda d, t, r: events.append(d))
    assert server.requests[-1] == (path, f"bytes={len(OLD_ZIP) // 2}-")
    assert events[0] == len(OLD_ZIP) // 2 and events[-1] == len(OLD_ZIP)
    assert files_under(folder) == OLD_FILES and not part.exists()


def test_stale_partial_file_is_restarted(server: Server, tmp_path: Path) -> None:
    part = tmp_path / "downloads" / f"{NEW}.zip.part"
    part.parent.mkdir()
    part.write_bytes(b"garbage from another version of the file " * 10)  # resumable size, wrong bytes
    folder = download_eden_dataset(NEW, tmp_path, base_url=server.base_url)
    assert files_under(folder) == NEW_FILES
    assert [r for _, r in server.requests] == [f"bytes={410}-", None]


def test_cancel_raises_cancelled_and_leaves_no_dataset(server: Server, tmp_path: Path) -> None:
    with pytest.raises(Cancelled):
        download_eden_dataset(OLD, tmp_path, base_url=server.base_url, should_cancel=lambda: True)
    assert not (tmp_path / "eden" / OLD).exists()


def test_invalid_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="not a valid Eden dataset name"):
        download_eden_dataset("../etc", tmp_path)


def test_combined_download_forms_one_multiclass_folder(server: Server, tmp_path: Path) -> None:
    combined = download_eden_datasets([OLD, NEW, OLD], tmp_path, base_url=server.base_url)
    assert combined.parent == tmp_path / "eden_combined"
    entries = sorted(combined.iterdir())
    assert [p.name for p in entries] == sorted([OLD, NEW])
    assert all(p.is_symlink() and p.is_dir() for p in entries)
    assert {eden_label(p.name) for p in entries} == {"Black nightsade", "Cucumber"}
    assert files_under(combined / OLD) == OLD_FILES and files_under(combined / NEW) == NEW_FILES
    # same choice -> same folder, from the cache; a broken folder is rebuilt
    n = len(server.requests)
    assert download_eden_datasets([NEW, OLD], tmp_path, base_url=server.base_url) == combined
    (combined / NEW).unlink()
    assert download_eden_datasets([NEW, OLD], tmp_path, base_url=server.base_url) == combined
    assert sorted(p.name for p in combined.iterdir()) == sorted([OLD, NEW]) and len(server.requests) == n
    assert [p.name for p in combined.parent.iterdir()] == [combined.name]
    with pytest.raises(DownloadError, match="No Eden dataset"):
        download_eden_datasets([], tmp_path)


def test_combined_folder_loads_as_eden_dataset(server: Server, tmp_path: Path) -> None:
    data = pytest.importorskip("toptune_core.data.dataset")
    combined = download_eden_datasets([OLD, NEW], tmp_path, base_url=server.base_url)
    ds = data.load_dataset(combined)
    assert sorted(ds.classes) == ["Black nightsade", "Cucumber"]
    assert sorted(ds.class_counts().values()) == [4, 4]


def test_one_failed_download_stops_the_others_which_resume_later(server: Server, tmp_path: Path) -> None:
    missing = "Kale-010101-Healthy-zz-V1-20210101000000"
    server.rate = 100_000  # the two real zips take seconds; the 404 comes at once
    with pytest.raises(DownloadError, match="HTTP 404") as info:
        download_eden_datasets([OLD, NEW, missing], tmp_path, base_url=server.base_url)
    assert f"'{missing}'" in _one_line(info.value), "the cause is reported, not the downloads it stopped"
    assert server.max_active >= 2
    parts = {p.name: p.stat().st_size for p in (tmp_path / "downloads").glob("*.part")}
    assert not (tmp_path / "eden" / OLD).exists() and not (tmp_path / "eden" / NEW).exists()
    server.rate = None
    combined = download_eden_datasets([OLD, NEW], tmp_path, base_url=server.base_url)
    assert files_under(combined / OLD) == OLD_FILES and files_under(combined / NEW) == NEW_FILES
    resumed = [r for _, r in server.requests if r]
    assert len(resumed) == len([s for s in parts.values() if s]), "every partial download resumed"


def test_cancel_stops_every_concurrent_download(server: Server, tmp_path: Path) -> None:
    server.rate = 50_000
    started = threading.Event()
    with pytest.raises(Cancelled):
        download_eden_datasets([OLD, NEW], tmp_path, base_url=server.base_url,
                               progress=lambda d, t, r: started.set(),
                               should_cancel=lambda: started.is_set() and server.max_active >= 2)
    assert sorted((tmp_path / "eden").iterdir()) == []
