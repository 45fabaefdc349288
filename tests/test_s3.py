"""Datasets in object storage: ``s3://BUCKET/PREFIX`` read like a folder, against moto's S3 server.

One moto server on 127.0.0.1 (a random free port) serves the module and is
stopped at its end; the AWS environment points at it (``AWS_ENDPOINT_URL``,
test credentials), so the code under test reaches it exactly as it would reach
MinIO or AWS. The demo set is uploaded once under ``leaves/beans/``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO, copy_subset, seed_cache
from toptune_core.config import DEMO_DATASET
from toptune_core.data import storage
from toptune_core.data.dataset import load_dataset
from toptune_core.data.images import load_rgb
from toptune_core.errors import DatasetError, ImageError, PathNotAllowed
from toptune_core.experiment import run_toptuning
from toptune_core.features.cache import FeatureCache, get_features
from toptune_core.runs.store import RunStore

BUCKET = "leaves"
DEMO_URL = f"s3://{BUCKET}/beans"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def upload(client, folder: Path, bucket: str, prefix: str) -> None:
    for f in sorted(folder.rglob("*")):
        if f.is_file():
            client.upload_file(str(f), bucket, f"{prefix}/{f.relative_to(folder).as_posix()}")


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server with the demo set at s3://leaves/beans; the boto3 client the tests arrange objects with."""
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        with pytest.MonkeyPatch.context() as mp:
            for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_CONFIG_FILE",
                         "AWS_SHARED_CREDENTIALS_FILE"):
                mp.delenv(name, raising=False)
            mp.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
            mp.setenv("AWS_ACCESS_KEY_ID", "testing")
            mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
            mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
            client = boto3.client("s3")
            client.create_bucket(Bucket=BUCKET)
            upload(client, DEMO_DATASET, BUCKET, "beans")
            yield client
    finally:
        server.stop()


def cli(args: list[str], env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "toptune_core", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def one_line(message: str) -> bool:
    return bool(message) and "\n" not in message.strip() and "Traceback" not in message


# --- listing and fingerprint ---------------------------------------------------------------------------

def test_a_bucket_lists_like_the_folder(s3):
    folder, bucket = load_dataset(DEMO_DATASET), load_dataset(DEMO_URL + "/")  # a trailing / is the same prefix
    assert str(bucket.root) == DEMO_URL and bucket.layout == "imagefolder"
    assert bucket.classes == folder.classes and bucket.relpaths == folder.relpaths
    assert bucket.labels.tolist() == folder.labels.tolist() and bucket.skipped == []
    assert all(storage.is_url(p) and str(p).startswith(DEMO_URL + "/") for p in bucket.paths)
    assert bucket.subset([0, 5]).relpaths == [bucket.relpaths[0], bucket.relpaths[5]]
    # the photo's bytes come from the store and decode as the file does
    first = np.asarray(load_rgb(bucket.paths[0]))
    np.testing.assert_array_equal(first, np.asarray(load_rgb(folder.paths[0])))


def test_the_fingerprint_is_stable_and_changes_with_an_object(s3, tmp_path):
    upload(s3, copy_subset(DEMO_DATASET, tmp_path / "few", 3), BUCKET, "changing")
    url = f"s3://{BUCKET}/changing"
    first = load_dataset(url).fingerprint()
    assert load_dataset(url).fingerprint() == first
    replaced = load_dataset(url).paths[0]
    s3.put_object(Bucket=BUCKET, Key=replaced.key, Body=(DEMO_DATASET / "healthy" / "healthy_0002.jpg").read_bytes())
    changed = load_dataset(url).fingerprint()
    assert changed != first
    s3.copy_object(Bucket=BUCKET, Key="changing/healthy/extra.jpg", CopySource={"Bucket": BUCKET, "Key": replaced.key})
    assert load_dataset(url).fingerprint() not in (first, changed)


def test_an_edited_version_of_a_bucket_and_its_zip(s3, tmp_path):
    import io
    import zipfile

    from toptune_core.data.version_export import version_zip
    from toptune_core.data.versions import DatasetVersions, read_version

    upload(s3, copy_subset(DEMO_DATASET, tmp_path / "edited", 3), BUCKET, "edited")
    url, home = f"s3://{BUCKET}/edited", tmp_path / "home"
    base = load_dataset(url)
    DatasetVersions(home, url + "/").move(base.relpaths[0], "healthy")  # the same prefix, written another way
    edited = read_version(home, url)
    moved = edited.relpaths.index(base.relpaths[0])
    assert edited.classes[edited.labels[moved]] == "healthy" and str(edited.paths[moved]) == str(base.paths[0])
    assert edited.fingerprint() not in (base.fingerprint(), load_dataset(url).subset(range(9)).fingerprint())
    with zipfile.ZipFile(io.BytesIO(version_zip(edited))) as zf:
        assert len(zf.namelist()) == 9
        assert any(n.startswith("healthy/") and base.paths[0].name in n for n in zf.namelist())


# --- top-tuning from the store -------------------------------------------------------------------------

def test_the_demo_bucket_top_tunes_as_the_folder_and_the_second_run_is_a_cache_hit(s3, tmp_path, lite0_extractor,
                                                                                   demo_lite0_cache):
    store, cache = RunStore(tmp_path / "runs"), FeatureCache(seed_cache(demo_lite0_cache, tmp_path / "features"))
    on_disk = run_toptuning(DEMO_DATASET, store=store, cache=cache, extractor=lite0_extractor)
    in_store = run_toptuning(DEMO_URL, store=store, cache=cache, extractor=lite0_extractor)
    assert in_store.status == "completed" and in_store.timings["cache_hit"] is False
    assert in_store.metrics["accuracy"] == on_disk.metrics["accuracy"] > 0.7
    assert in_store.split["n_test"] == on_disk.split["n_test"] and in_store.split["unreadable"] == []
    assert in_store.dataset == DEMO_URL
    assert all(str(p).startswith(DEMO_URL + "/") for p in in_store.split["test_files"])
    again = run_toptuning(DEMO_URL, store=store, cache=cache, extractor=lite0_extractor)
    assert again.timings["cache_hit"] is True and again.metrics["accuracy"] == in_store.metrics["accuracy"]


def test_the_command_line_extracts_top_tunes_and_predicts_from_the_store(s3, subprocess_env, tmp_path):
    url = f"s3://{BUCKET}/cli"
    upload(s3, copy_subset(DEMO_DATASET, tmp_path / "cli", 8), BUCKET, "cli")
    extracted = cli(["extract", "--data", url, "--views", "1", "--json", str(tmp_path / "e.json")], subprocess_env)
    assert extracted.returncode == 0, extracted.stderr
    assert json.loads((tmp_path / "e.json").read_text())["n_features"] == 24
    run = cli(["toptune", "--data", url, "--views", "1", "--json", str(tmp_path / "t.json")], subprocess_env)
    assert run.returncode == 0, run.stderr
    result = json.loads((tmp_path / "t.json").read_text())
    assert result["cache_hit"] is True and result["n_train"] + result["n_test"] == 24
    checked = cli(["check-labels", "--data", url, "--views", "1", "--json", str(tmp_path / "c.json")], subprocess_env)
    assert checked.returncode == 0, checked.stderr
    assert "features from the cache" in checked.stdout and "of 24 photos" in checked.stdout
    leaf = (DEMO_DATASET / "bean_rust" / "bean_rust_0002.jpg").read_bytes()
    s3.put_object(Bucket=BUCKET, Key="cli-new/leaf.jpg", Body=leaf)
    s3.put_object(Bucket=BUCKET, Key="cli-new/notes.jpg", Body=b"field notes, not a photo")
    done = cli(["predict", "--run", result["run_id"], f"s3://{BUCKET}/cli-new", "--json", str(tmp_path / "p.json")],
               subprocess_env)
    assert done.returncode == 0, done.stderr
    by_path = {e["path"]: e for e in json.loads((tmp_path / "p.json").read_text())["predictions"]}
    assert set(by_path) == {f"s3://{BUCKET}/cli-new/leaf.jpg", f"s3://{BUCKET}/cli-new/notes.jpg"}
    assert by_path[f"s3://{BUCKET}/cli-new/leaf.jpg"]["label"] in ("angular_leaf_spot", "bean_rust", "healthy")
    assert "text file" in by_path[f"s3://{BUCKET}/cli-new/notes.jpg"]["error"]


# --- bad input: one line each --------------------------------------------------------------------------

def test_no_such_bucket_an_empty_prefix_and_a_bad_url_are_one_line(s3, subprocess_env):
    for url, words in (("s3://no-such-bucket-here/beans", "does not exist"),
                       (f"s3://{BUCKET}/nothing-here", "no objects under"),
                       (f"s3://{BUCKET}/bea", "no objects under"),  # a prefix of a name is not a folder
                       ("s3://", "no bucket"),
                       (f"s3://{BUCKET}/beans/../beans", "'..'")):
        with pytest.raises(DatasetError, match=words) as err:
            load_dataset(url)
        assert one_line(str(err.value))
    done = cli(["toptune", "--data", "s3://no-such-bucket-here/beans"], subprocess_env, timeout=120)
    assert done.returncode != 0 and done.stderr.strip().startswith("error: The bucket 'no-such-bucket-here'")
    assert one_line(done.stderr)


def test_no_access_and_wrong_credentials_are_one_line(s3, monkeypatch):
    """moto checks IAM when told to (its reset-auth endpoint): a reader allowed one bucket only."""
    import boto3
    import requests

    s3.create_bucket(Bucket="private-leaves")
    s3.put_object(Bucket="private-leaves", Key="beans/healthy/a.jpg", Body=b"x")
    iam = boto3.client("iam")
    iam.create_user(UserName="reader")
    key = iam.create_access_key(UserName="reader")["AccessKey"]
    allow = {"Effect": "Allow", "Action": ["s3:ListBucket", "s3:GetObject"],
             "Resource": [f"arn:aws:s3:::{BUCKET}", f"arn:aws:s3:::{BUCKET}/*"]}
    policy = {"Version": "2012-10-17", "Statement": [allow]}
    iam.put_user_policy(UserName="reader", PolicyName="leaves-only", PolicyDocument=json.dumps(policy))
    auth = f"{os.environ['AWS_ENDPOINT_URL']}/moto-api/reset-auth"
    requests.post(auth, data=b"0", timeout=10).raise_for_status()
    try:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
        assert len(load_dataset(DEMO_URL)) == 300  # the reader may read the demo bucket
        with pytest.raises(DatasetError, match="cannot be listed: access denied") as err:
            load_dataset("s3://private-leaves/beans")
        assert one_line(str(err.value))
        with pytest.raises(ImageError, match="access denied"):
            load_rgb("s3://private-leaves/beans/healthy/a.jpg")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG0")
        with pytest.raises(DatasetError, match="refused the credentials") as err:
            load_dataset(DEMO_URL)
        assert one_line(str(err.value))
    finally:
        requests.post(auth, data=b"inf", timeout=10).raise_for_status()


def test_unreadable_objects_are_skipped_and_counted_as_files_are(s3, tmp_path, lite0_extractor):
    folder = copy_subset(DEMO_DATASET, tmp_path / "broken", 4)
    (folder / "healthy" / "broken.jpg").write_bytes(b"not a jpeg at all")
    (folder / "healthy" / "empty.jpg").write_bytes(b"")
    (folder / "healthy" / "notes.txt").write_text("field notes")
    upload(s3, folder, BUCKET, "broken")
    on_disk, in_store = load_dataset(folder), load_dataset(f"s3://{BUCKET}/broken")
    assert in_store.relpaths == on_disk.relpaths and in_store.skipped == on_disk.skipped == [
        ("healthy/notes.txt", "not an image file")]
    s3.delete_object(Bucket=BUCKET, Key="broken/bean_rust/" + in_store.paths[4].name)  # gone after the listing
    cache = FeatureCache(tmp_path / "features")
    entry = get_features(in_store, lite0_extractor, cache).entry
    assert int(entry.ok.sum()) == len(in_store) - 3
    reasons = dict(entry.errors)
    assert set(reasons) == {"healthy/broken.jpg", "healthy/empty.jpg", f"bean_rust/{in_store.paths[4].name}"}
    assert "text file" in reasons["healthy/broken.jpg"] and "empty" in reasons["healthy/empty.jpg"]
    assert "does not exist" in reasons[f"bean_rust/{in_store.paths[4].name}"]
    assert all(one_line(r) for r in reasons.values())
    local = get_features(on_disk, lite0_extractor, cache).entry
    assert [rel for rel, _ in local.errors] == ["healthy/broken.jpg", "healthy/empty.jpg"]
    assert [reasons[rel] for rel, _ in local.errors] == [r for _, r in local.errors]


# --- Ray: the workers read the objects themselves ------------------------------------------------------

def test_a_ray_extraction_from_the_store_gives_the_local_features(s3, tmp_path, lite0_extractor):
    import ray

    from toptune_core.features.distributed import RayFeatureExtractor

    upload(s3, copy_subset(DEMO_DATASET, tmp_path / "ray", 8), BUCKET, "ray")
    dataset = load_dataset(f"s3://{BUCKET}/ray")
    environ = dict(os.environ)
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="warning", log_to_driver=False)
    try:
        on_ray = RayFeatureExtractor("tf_efficientnet_lite0", views="1",
                                     resolution=lite0_extractor.resolution).transform(dataset.paths)
    finally:
        ray.shutdown()
        os.environ.clear()
        os.environ.update(environ)
    local = lite0_extractor.transform(dataset.paths)
    assert on_ray.ok.all() and local.ok.all() and on_ray.errors == []
    np.testing.assert_allclose(on_ray.features, local.features, rtol=0, atol=1e-4)


# --- locations and the shared server's allow-list ------------------------------------------------------

def test_object_urls_and_root_lists():
    url = storage.ObjectURL(" s3://bucket//beans/healthy/a.jpg ")
    assert url == "s3://bucket/beans/healthy/a.jpg" and (url.bucket, url.key) == ("bucket", "beans/healthy/a.jpg")
    assert (url.name, url.suffix) == ("a.jpg", ".jpg")
    assert url.relative_to("s3://bucket/beans").as_posix() == "healthy/a.jpg"
    assert storage.ObjectURL("s3://bucket/beans") / "healthy" == "s3://bucket/beans/healthy"
    with pytest.raises(ValueError):
        url.relative_to("s3://bucket/bea")
    assert storage.portable(url) == str(url) and storage.portable("x").startswith("/")
    assert storage.split_roots("/data/a:s3://bkt/leaves::/data/b") == ["/data/a", "s3://bkt/leaves", "/data/b"]


def test_shared_mode_allows_only_the_operators_prefixes(s3, monkeypatch, tmp_path):
    from toptune_core.config import Settings
    from toptune_core.shared.paths import check_photos_inside, offered_folders, resolve_inside

    monkeypatch.setenv("TOPTUNE_DATA_ROOTS", f"{tmp_path}:s3://{BUCKET}/beans")
    roots = Settings.from_env().data_roots
    assert roots == (tmp_path, storage.ObjectURL(DEMO_URL))
    offered = dict((str(path), label) for label, path in offered_folders(roots))
    assert offered[DEMO_URL] == DEMO_URL and offered[DEMO_URL + "/healthy"] == DEMO_URL + "/healthy"
    assert resolve_inside(DEMO_URL + "/healthy/", roots) == DEMO_URL + "/healthy"
    for refused in (f"s3://{BUCKET}/beans-other", f"s3://{BUCKET}", f"s3://{BUCKET}/beans/../other",
                    "s3://other-bucket/beans"):
        with pytest.raises(PathNotAllowed):
            resolve_inside(refused, roots)
    check_photos_inside(load_dataset(DEMO_URL), roots)


# --- the dashboard -------------------------------------------------------------------------------------

def test_the_data_page_reads_a_bucket_and_shows_its_photos(s3):
    from tests.test_app import button, goto, metrics, new_app, no_problems

    at = goto(new_app(), "data")
    at.radio(key="data_source").set_value("Object storage (S3)").run()
    at.text_input(key="s3_url").input("s3://no-such-bucket-here/beans").run()
    button(at, "Use this prefix").click().run()
    assert not at.exception and "does not exist" in at.error[0].value

    at.text_input(key="s3_url").input(DEMO_URL).run()
    button(at, "Use this prefix").click().run()
    no_problems(at)
    assert at.subheader[0].value == f"Object storage {DEMO_URL}"  # (the count is the version's: the metric)
    assert at.metric[0].label == "Photos" and at.metric[0].value == "300"
    assert metrics(at)["Photos"] == "300" and metrics(at)["Files skipped"] == "0"
    assert len(at.image) == 12, "four thumbnails per class, read from the store"
    sizes = [m.value for m in at.markdown if m.value.startswith("Checked ")]
    assert sizes and "Checked 150 photos: most common size 256×256 px (150 photos)" in sizes[0], \
        "photo sizes read from object headers"
    assert not at.warning
