"""Volumes and networks: create, get, list with filters, delete, prune with a label filter."""

from __future__ import annotations

import pytest

from kiln.docker import Docker, DockerError
from kiln.docker.networks import DockerNetwork
from kiln.docker.volumes import DockerVolume
from tests.docker.conftest import LABEL, LABELS, RUN
from tests.docker.helpers import create, name

pytestmark = [pytest.mark.anyio, pytest.mark.docker]


async def test_volume_crud_list_and_prune() -> None:
    async with Docker() as docker:
        vname = name("vol-")
        volume = await docker.volumes.create({"Name": vname, "Labels": LABELS, "Driver": "local"})
        assert isinstance(volume, DockerVolume)
        assert volume.name == vname
        assert (await volume.show())["Name"] == vname
        assert (await docker.volumes.get(vname)).name == vname
        listed = await docker.volumes.list(filters={"label": f"{LABEL}={RUN}"})
        assert vname in {v["Name"] for v in listed["Volumes"]}
        await volume.delete()
        with pytest.raises(DockerError) as e:
            await docker.volumes.get(vname)
        assert e.value.status == 404

        anonymous = await docker.volumes.create({"Labels": LABELS})
        assert anonymous.name
        await anonymous.delete(True)

        doomed = await docker.volumes.create({"Name": name("vol-"), "Labels": LABELS})
        pruned = await docker.volumes.prune(filters={"label": f"{LABEL}={RUN}"})
        assert doomed.name in pruned["VolumesDeleted"]
        assert isinstance(pruned["SpaceReclaimed"], int)


async def test_network_crud_connect_and_prune() -> None:
    async with Docker() as docker:
        nets = await docker.networks.list()
        assert any(n["Name"] == "none" and n["Driver"] == "null" for n in nets)
        nname = name("net-")
        network = await docker.networks.create({"Name": nname, "Labels": LABELS})
        assert isinstance(network, DockerNetwork)
        assert (await network.show())["Name"] == nname
        got = await docker.networks.get(nname)
        assert got.id == network.id
        listed = await docker.networks.list(filters={"label": f"{LABEL}={RUN}"})
        assert nname in {n["Name"] for n in listed}

        container = await create(docker, "sleep", "30")
        await container.start()
        await network.connect({"Container": container.id})
        info = await container.show()
        assert nname in info["NetworkSettings"]["Networks"]
        await network.disconnect({"Container": container.id})
        await container.delete(force=True)

        assert await network.delete() is True
        with pytest.raises(DockerError):
            await network.delete()

        doomed = name("net-")
        await docker.networks.create({"Name": doomed, "Labels": LABELS})
        pruned = await docker.networks.prune(filters={"label": f"{LABEL}={RUN}"})
        assert doomed in pruned["NetworksDeleted"]
