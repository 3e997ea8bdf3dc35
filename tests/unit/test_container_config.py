"""What Kiln asks Docker to create: the pure container spec."""

from __future__ import annotations

from kiln.containers.spec import (
    LABEL_CALL,
    LABEL_DAEMON,
    LABEL_FUNCTION,
    LABEL_INSTANCE,
    Identity,
    container_config,
    container_name,
)
from kiln.functions.spec import FunctionSpec
from kiln.units import MiB

IDENTITY = Identity("d1", instance="run1")
SPEC = FunctionSpec(name="echo", image="busybox:1", cmd=("cat", "-"), memory=64 * MiB)


def test_labels_say_who_started_it() -> None:
    config = container_config(SPEC, IDENTITY, stdio=True, extra_labels={LABEL_CALL: "c1"})
    assert config["Labels"] == {
        LABEL_DAEMON: "d1",
        LABEL_INSTANCE: "run1",
        LABEL_FUNCTION: "echo",
        LABEL_CALL: "c1",
    }


def test_image_cmd_and_memory_without_swap() -> None:
    config = container_config(SPEC, IDENTITY, stdio=True)
    assert config["Image"] == "busybox:1"
    assert config["Cmd"] == ["cat", "-"]
    hc = config["HostConfig"]
    assert hc["Memory"] == hc["MemorySwap"] == 64 * MiB
    assert hc["PidsLimit"] == SPEC.pids_limit


def test_no_cmd_keeps_the_image_default() -> None:
    config = container_config(FunctionSpec(name="f", image="i"), IDENTITY, stdio=True)
    assert "Cmd" not in config


def test_cpus_become_nano_cpus_only_when_set() -> None:
    assert "NanoCpus" not in container_config(SPEC, IDENTITY, stdio=True)["HostConfig"]
    spec = FunctionSpec(name="f", image="i", cpus=0.25)
    assert container_config(spec, IDENTITY, stdio=True)["HostConfig"]["NanoCpus"] == 250_000_000


def test_env_of_the_call_overrides_the_spec() -> None:
    spec = FunctionSpec(name="f", image="i", env={"A": "spec", "B": "spec"})
    config = container_config(spec, IDENTITY, stdio=False, env={"B": "call"})
    assert sorted(config["Env"]) == ["A=spec", "B=call"]


def test_stdio_attaches_stdin_once_and_hot_does_not() -> None:
    stdio = container_config(SPEC, IDENTITY, stdio=True)
    assert stdio["OpenStdin"] is True
    assert stdio["StdinOnce"] is True
    assert stdio["AttachStdin"] is True
    hot = container_config(SPEC, IDENTITY, stdio=False, binds=["/run/x:/tmp/iofs"])
    assert "OpenStdin" not in hot
    assert hot["HostConfig"]["Binds"] == ["/run/x:/tmp/iofs"]
    assert "Binds" not in stdio["HostConfig"]


def test_network_none_disables_networking() -> None:
    assert container_config(SPEC, IDENTITY, stdio=True)["NetworkDisabled"] is True
    spec = FunctionSpec(name="f", image="i", network="bridge")
    config = container_config(spec, IDENTITY, stdio=True)
    assert config["NetworkDisabled"] is False
    assert config["HostConfig"]["NetworkMode"] == "bridge"


def test_the_name_is_deterministic_and_within_dockers_limit() -> None:
    assert container_name(IDENTITY, "echo", "c1") == container_name(IDENTITY, "echo", "c1")
    assert container_name(IDENTITY, "echo", "c1") != container_name(IDENTITY, "echo", "c2")
    assert len(container_name(IDENTITY, "f" * 63, "x" * 200)) <= 128
