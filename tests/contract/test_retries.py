"""The API client's retries (protocol §2), against the reference server behind the fault proxy.

Every test talks to ``pictofs serve`` through ``tests/faultproxy.py`` with a
``pictofs.api.Client`` whose retry policy has its sleep replaced by a recorder and its jitter
fixed at 1.0, so waits are asserted as numbers and no test sleeps through a backoff. Request
counts come from the proxy, which sees every attempt (the signed storage PUTs included,
since the server builds upload URLs from the ``Host`` the proxy forwards).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterator

import pytest

from faultproxy import FaultProxy
from imagegen import png_bytes, sized_jpeg
from pictofs.api import Client, RateLimitError, ServerError
from pictofs.model import Dataset, Image

API = "/api/v1/developer"
DATASET_BY_NAME = rf"^{API}/datasets/[^/]+$"
IMAGE_BYTES = rf"^{API}/images/[0-9a-f-]{{36}}$"
IMAGE_METADATA = rf"^{API}/images/[0-9a-f-]{{36}}/metadata$"
UPLOAD_URL = rf"^{API}/images/upload-url$"
STORAGE_PUT = r"^/storage/upload/"
REGISTER = rf"^{API}/images/register$"


@pytest.fixture()
def proxy(server) -> Iterator[FaultProxy]:
    with FaultProxy(server.base_url, seed=0) as started:
        yield started
        assert started.stats.errors == []


@pytest.fixture()
def sleeps() -> list[float]:
    """The waits the client asked for, in order (filled by the client under test)."""
    return []


@pytest.fixture()
def api(server, proxy: FaultProxy, sleeps: list[float]) -> Iterator[Client]:
    """A client of the server through the proxy; its waits are recorded, not slept."""
    client = Client(api_key=server.key, base_url=proxy.url)
    client.transport.retry = dataclasses.replace(
        client.transport.retry, sleep=sleeps.append, random=lambda: 0.5)  # jitter factor 1.0
    yield client
    client.close()


def write_image(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


def upload_direct(client: Client, dataset: Dataset, folder: Path, name: str,
                  data: bytes) -> Image:
    """Upload without the proxy (setup for the read tests)."""
    return client.images.upload(dataset.id, write_image(folder, name, data))


def test_get_is_retried_after_a_503(api: Client, proxy: FaultProxy, dataset: Dataset,
                                    sleeps: list[float]) -> None:
    proxy.fail_next(status=503, method="GET", path=DATASET_BY_NAME)

    assert api.projects.get(dataset.name).id == dataset.id
    assert proxy.stats.count("GET", DATASET_BY_NAME) == 2
    assert sleeps == [pytest.approx(1.0)]  # the first backoff step


def test_429_waits_at_least_retry_after(api: Client, proxy: FaultProxy, dataset: Dataset,
                                        sleeps: list[float]) -> None:
    proxy.fail_next(status=429, method="GET", path=DATASET_BY_NAME, retry_after=7)

    assert api.projects.get(dataset.name).id == dataset.id
    assert proxy.stats.count("GET", DATASET_BY_NAME) == 2
    assert len(sleeps) == 1 and sleeps[0] >= 7


def test_retry_after_over_120_seconds_gives_up_at_once(api: Client, proxy: FaultProxy,
                                                       dataset: Dataset,
                                                       sleeps: list[float]) -> None:
    proxy.fail_next(status=429, method="GET", path=DATASET_BY_NAME, retry_after=121)

    with pytest.raises(RateLimitError) as raised:
        api.projects.get(dataset.name)
    assert raised.value.retry_after == 121
    assert proxy.stats.count("GET", DATASET_BY_NAME) == 1
    assert sleeps == []


def test_four_503s_raise_server_error_after_four_attempts(api: Client, proxy: FaultProxy,
                                                         dataset: Dataset,
                                                         sleeps: list[float]) -> None:
    proxy.fail_next(status=503, count=4, method="GET", path=DATASET_BY_NAME)

    with pytest.raises(ServerError):
        api.projects.get(dataset.name)
    assert proxy.stats.count("GET", DATASET_BY_NAME) == 4
    assert sleeps == [pytest.approx(1.0), pytest.approx(2.0), pytest.approx(4.0)]
    assert api.projects.get(dataset.name).id == dataset.id  # the next call is served again


# Reference only: the fault proxy is in front of the API; on the hosted profile the storage
# PUT goes to the storage host.
@pytest.mark.profiles("reference")
@pytest.mark.parametrize("step", [UPLOAD_URL, STORAGE_PUT, REGISTER],
                         ids=["upload-url", "storage-put", "register"])
def test_upload_step_reset_after_the_server_acted_creates_one_image(
        api: Client, client: Client, proxy: FaultProxy, dataset: Dataset, tmp_path: Path,
        step: str) -> None:
    """The server handles the request, the answer is lost (RST); the retry carries the same
    Idempotency-Key (POST) or repeats an idempotent PUT, and one image results."""
    proxy.reset_next(path=step, forward=True)
    data = png_bytes(seed=11)

    image = api.images.upload(dataset.id, write_image(tmp_path, "reset.png", data))

    stats = proxy.stats
    assert stats.faults == {"reset": 1}
    assert stats.count(path=step) == 2
    for other in {UPLOAD_URL, STORAGE_PUT, REGISTER} - {step}:
        assert stats.count(path=other) == 1
    stored = list(client.images.list(dataset.id))
    assert [(i.id, i.filename, i.file_size) for i in stored] == [(image.id, "reset.png",
                                                                  len(data))]


# Reference only: the fault proxy is in front of the API; on the hosted profile these
# bytes come from the storage host.
@pytest.mark.profiles("reference")
def test_truncated_image_download_is_retried(api: Client, client: Client, proxy: FaultProxy,
                                             dataset: Dataset, tmp_path: Path) -> None:
    data = sized_jpeg(200_000, seed=3)
    image = upload_direct(client, dataset, tmp_path, "cut.jpg", data)
    proxy.truncate_next(keep_bytes=1000, method="GET", path=IMAGE_BYTES)

    out = api.images.download(image.id, tmp_path / "out.jpg")

    assert out.read_bytes() == data
    proxy.wait_idle()
    first, second = proxy.stats.records("GET", IMAGE_BYTES)
    assert (first.bytes_sent, first.complete) == (1000, False)
    assert (second.bytes_sent, second.complete) == (len(data), True)


# Reference only: the fault proxy is in front of the API; on the hosted profile these
# bytes come from the storage host.
@pytest.mark.profiles("reference")
def test_download_cut_late_in_the_stream_is_retried(api: Client, client: Client,
                                                          proxy: FaultProxy, dataset: Dataset,
                                                          tmp_path: Path) -> None:
    """Protocol §2: a GET body cut short is retried like a connection error, wherever the
    cut falls; a download to a file can start over."""
    data = sized_jpeg(6_000_000, seed=4)
    image = upload_direct(client, dataset, tmp_path, "late-cut.jpg", data)
    proxy.truncate_next(keep_bytes=4_000_000, method="GET", path=IMAGE_BYTES)

    out = api.images.download(image.id, tmp_path / "out.jpg")

    assert out.read_bytes() == data
    assert proxy.stats.count("GET", IMAGE_BYTES) == 2


def test_truncated_json_answer_is_retried(api: Client, client: Client, proxy: FaultProxy,
                                          dataset: Dataset, tmp_path: Path) -> None:
    image = upload_direct(client, dataset, tmp_path, "meta.png", png_bytes(seed=5))
    proxy.truncate_next(keep_bytes=20, method="GET", path=IMAGE_METADATA)

    got = api.images.get(image.id)
    assert (got.id, got.filename, got.file_size, got.width, got.height) == (
        image.id, "meta.png", image.file_size, image.width, image.height)
    proxy.wait_idle()
    first = proxy.stats.records("GET", IMAGE_METADATA)[0]
    assert (first.fault, first.bytes_sent, first.complete) == ("truncate", 20, False)
    assert proxy.stats.count("GET", IMAGE_METADATA) == 2


def test_a_keyed_post_answer_cut_short_is_retried_and_replayed(
        api: Client, proxy: FaultProxy, dataset: Dataset, tmp_path: Path) -> None:
    """A register whose answer is cut short took effect on the service: the retry with the
    same idempotency key gets the first answer replayed, and the image exists once."""
    proxy.truncate_next(keep_bytes=20, method="POST", path=REGISTER)

    image = api.images.upload(dataset.id, write_image(tmp_path, "cut.png", png_bytes(seed=6)))

    assert proxy.stats.count("POST", REGISTER) == 2
    listed = [i for i in api.images.list(dataset.id) if i.filename == "cut.png"]
    assert [i.id for i in listed] == [image.id]


def test_seeded_random_faults_upload_list_and_read_back(api: Client, proxy: FaultProxy,
                                                        dataset: Dataset,
                                                        tmp_path: Path) -> None:
    """10% of requests fail (503, 429, reset before or after forwarding, a stall): every call
    still succeeds through retries and the dataset holds exactly what was uploaded."""
    proxy.set_random_faults(rate=0.1, kinds=("503", "429", "reset", "stall"),
                            stall_seconds=0.05, retry_after=1)
    originals = {f"r{i}.png": png_bytes(seed=100 + i) for i in range(8)}

    uploaded = {name: api.images.upload(dataset.id, write_image(tmp_path, name, data))
                for name, data in originals.items()}
    listed = {image.filename: image.id for image in api.images.list(dataset.id)}
    assert listed == {name: image.id for name, image in uploaded.items()}
    for name, image in uploaded.items():
        out = api.images.download(image.id, tmp_path / f"back-{name}")
        assert out.read_bytes() == originals[name]

    assert sum(proxy.stats.faults.values()) > 0
