"""Images against the real engine, and a private registry on 127.0.0.1 for pull/push."""

from __future__ import annotations

import gzip
import io
import tarfile
from collections.abc import AsyncIterator

import pytest

from kiln.docker import Docker, DockerError
from tests.docker.conftest import BUSYBOX, LABELS
from tests.docker.helpers import create, name

pytestmark = [pytest.mark.anyio, pytest.mark.docker]


def context_tar(dockerfile: str) -> io.BytesIO:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        data = dockerfile.encode()
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return io.BytesIO(gzip.compress(raw.getvalue()))


async def test_inspect_get_history_list_tag_delete() -> None:
    async with Docker() as docker:
        image = await docker.images.inspect(BUSYBOX)
        assert image["Id"].startswith("sha256:")
        assert BUSYBOX in image["RepoTags"]
        assert "Architecture" in image
        with pytest.warns(DeprecationWarning, match="inspect"):
            assert (await docker.images.get(name=BUSYBOX))["Id"] == image["Id"]
        assert await docker.images.history(name=BUSYBOX)
        listed = await docker.images.list(filter=BUSYBOX)
        assert image["Id"] in {i["Id"] for i in listed}
        repo = name("tag-")
        assert await docker.images.tag(name=BUSYBOX, repo=repo, tag="1.0") is True
        assert await docker.images.tag(name=BUSYBOX, repo=repo) is True
        assert f"{repo}:1.0" in (await docker.images.inspect(f"{repo}:1.0"))["RepoTags"]
        assert await docker.images.delete(f"{repo}:1.0")
        assert await docker.images.delete(name=f"{repo}:latest", force=False, noprune=False)
        with pytest.raises(DockerError) as e:
            await docker.images.inspect(f"{repo}:1.0")
        assert e.value.status == 404


async def test_delete_of_an_image_in_use_is_a_conflict() -> None:
    async with Docker() as docker:
        repo = name("inuse-")
        await docker.images.tag(name=BUSYBOX, repo=repo, tag="x")
        image_id = (await docker.images.inspect(f"{repo}:x"))["Id"]
        container = await create(docker, "true")
        with pytest.raises(DockerError) as e:
            await docker.images.delete(image_id)  # tagged twice and used: refused
        assert e.value.status == 409
        await container.delete(force=True)
        await docker.images.delete(f"{repo}:x")
        with pytest.raises(DockerError) as e:
            await docker.images.delete(f"{repo}:x")
        assert e.value.status == 404


async def test_push_and_pull_through_a_local_registry(registry: str) -> None:
    async with Docker() as docker:
        repo = f"{registry}/{name('push-')}"
        await docker.images.tag(name=BUSYBOX, repo=repo, tag="latest")
        pushed = await docker.images.push(name=repo)
        assert isinstance(pushed, list)
        assert not [p for p in pushed if "error" in p]
        await docker.images.tag(name=BUSYBOX, repo=repo, tag="v2")
        streamed = [p async for p in docker.images.push(name=repo, tag="v2", stream=True)]
        assert not [p for p in streamed if "error" in p]
        await docker.images.delete(f"{repo}:latest")
        await docker.images.delete(f"{repo}:v2")
        pulled = await docker.pull(repo)
        assert isinstance(pulled, list)
        assert not [p for p in pulled if "error" in p]
        assert (await docker.images.inspect(repo))["Id"]
        await docker.images.delete(repo)
        items = [p async for p in docker.images.pull(f"{repo}:v2", stream=True)]
        assert items
        assert not [p for p in items if "error" in p]
        await docker.images.delete(f"{repo}:v2")


async def test_pull_with_a_bad_platform_is_a_400_with_dockers_message() -> None:
    async with Docker() as docker:
        with pytest.raises(DockerError) as e:
            await docker.images.pull("hello-world", platform="foo")
        assert e.value.status == 400
        assert "unknown operating system or architecture: invalid argument" in e.exconly()


async def test_build_as_list_and_stream_and_bad_platform() -> None:
    async with Docker() as docker:
        tag = name("build-")
        dockerfile = f"FROM {BUSYBOX}\nLABEL kiln.test.docker={LABELS['kiln.test.docker']}\n"
        out = await docker.images.build(fileobj=context_tar(dockerfile), encoding="gzip", tag=tag)
        assert isinstance(out, list)
        assert not [o for o in out if "error" in o]
        assert (await docker.images.inspect(tag))["Id"]
        items = [
            o
            async for o in docker.images.build(
                fileobj=context_tar(dockerfile), encoding="gzip", tag=tag, stream=True
            )
        ]
        assert items
        with pytest.raises(DockerError) as e:
            async for _ in docker.images.build(
                fileobj=context_tar(dockerfile), encoding="gzip", stream=True, platform="foo"
            ):
                pass
        assert e.value.status == 400
        await docker.images.delete(tag)


async def test_export_then_import() -> None:
    async with Docker() as docker:
        repo = name("export-")
        await docker.images.tag(name=BUSYBOX, repo=repo, tag="latest")
        chunks: list[bytes] = []
        async with docker.images.export_image(name=repo) as reader:
            assert reader
            async for data, _end in reader.iter_chunks():
                chunks.append(data)
        assert sum(len(c) for c in chunks) > 1000
        await docker.images.delete(f"{repo}:latest")

        async def body() -> AsyncIterator[bytes]:
            for chunk in chunks:
                yield chunk

        loaded = await docker.images.import_image(data=body())
        assert loaded
        assert not [item for item in loaded if "error" in item]
        assert (await docker.images.inspect(f"{repo}:latest"))["Id"]
        await docker.images.delete(f"{repo}:latest")


async def test_prune_builds_with_a_filter() -> None:
    async with Docker() as docker:
        result = await docker.images.prune_builds(
            reserved_space=0,
            max_used_space=10**9,
            min_free_space=0,
            all_builds=True,
            filters={"id": "kiln-no-such-build-cache"},
        )
        assert result["CachesDeleted"] is None
        assert isinstance(result["SpaceReclaimed"], int)
