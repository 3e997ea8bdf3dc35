"""kiln.docker's sans-IO parts, no Docker: JSON progress streams, host resolution and
context files, query parameters, error types."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kiln.docker import Docker, DockerContainerError, DockerError, DockerTimeout
from kiln.docker.errors import DockerConflict, DockerNotFound, DockerProtocolError, api_error
from kiln.docker.exceptions import DockerContextInvalidError, DockerContextTLSError
from kiln.docker.host import endpoint_for, resolve
from kiln.docker.jsonstream import JsonStreamDecoder
from kiln.docker.params import filters_param, httpize

# ---- JSON streams ------------------------------------------------------------------


@given(
    st.lists(
        st.dictionaries(st.text(max_size=5), st.one_of(st.integers(), st.text(max_size=8))),
        max_size=6,
    ),
    st.data(),
)
def test_json_stream_any_split(objects: list[dict[str, object]], data: st.DataObject) -> None:
    raw = b"".join(json.dumps(o).encode() + b"\r\n" for o in objects)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=8)))
    decoder = JsonStreamDecoder()
    out: list[object] = []
    last = 0
    for cut in [*cuts, len(raw)]:
        out += decoder.feed(raw[last:cut])
        last = cut
    decoder.eof()
    assert out == objects


def test_json_stream_back_to_back_objects_without_newlines() -> None:
    assert JsonStreamDecoder().feed(b'{"a":1}{"b":2}') == [{"a": 1}, {"b": 2}]


def test_json_stream_garbage_and_truncation_are_protocol_errors() -> None:
    with pytest.raises(DockerProtocolError):
        JsonStreamDecoder().feed(b"not json\n")
    decoder = JsonStreamDecoder()
    assert decoder.feed(b'{"status": "Pull') == []
    with pytest.raises(DockerProtocolError):
        decoder.eof()


def test_json_stream_limit() -> None:
    with pytest.raises(DockerProtocolError):
        JsonStreamDecoder(limit=10).feed(b'{"a": "' + b"x" * 100)


# ---- host resolution ---------------------------------------------------------------


def _context(home: Path, name: str, host: str) -> None:
    meta = home / ".docker" / "contexts" / "meta" / hashlib.sha256(name.encode()).hexdigest()
    meta.mkdir(parents=True)
    (meta / "meta.json").write_text(
        json.dumps({"Name": name, "Endpoints": {"docker": {"Host": host}}})
    )


def test_docker_host_rules(tmp_path: Path) -> None:
    home = str(tmp_path)
    _context(tmp_path, "ctx", "tcp://ctx-host:2375")
    _context(tmp_path, "other", "tcp://other-host:2375")
    env = {"HOME": home}
    assert Docker(url="tcp://url-host:2375", env=env).docker_host == "tcp://url-host:2375"
    assert Docker(url="unix:///x.sock", env=env).docker_host == "unix://localhost"
    with_host = {**env, "DOCKER_HOST": "tcp://env-host:2375", "DOCKER_CONTEXT": "other"}
    assert Docker(env=with_host).docker_host == "tcp://env-host:2375"
    assert Docker(context="ctx", env=with_host).docker_host == "tcp://ctx-host:2375"
    assert Docker(context="default", env=with_host).docker_host == "tcp://env-host:2375"
    assert Docker(url="tcp://u:1", context="ctx", env=env).docker_host == "tcp://u:1"
    assert Docker(env={**env, "DOCKER_CONTEXT": "other"}).docker_host == "tcp://other-host:2375"
    (tmp_path / ".docker" / "config.json").write_text(json.dumps({"currentContext": "ctx"}))
    assert Docker(env=env).docker_host == "tcp://ctx-host:2375"
    assert Docker._get_context_dir_name("ctx") == hashlib.sha256(b"ctx").hexdigest()


def test_socket_fallback_order(tmp_path: Path) -> None:
    seen: list[str] = []

    def exists(path: str) -> bool:
        seen.append(path)
        return path.endswith("/.docker/run/docker.sock")

    endpoint = resolve(None, None, {"HOME": str(tmp_path)}, exists=exists)
    assert endpoint.uds == f"{tmp_path}/.docker/run/docker.sock"
    assert seen == ["/run/docker.sock", "/var/run/docker.sock", endpoint.uds]


def test_bad_contexts(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path)}
    with pytest.raises(DockerContextInvalidError):
        resolve(None, "missing", env)
    _context(tmp_path, "tls", "tcp://h:2376")
    tls = tmp_path / ".docker/contexts/tls" / hashlib.sha256(b"tls").hexdigest() / "docker"
    tls.mkdir(parents=True)
    (tls / "cert.pem").write_text("x")
    with pytest.raises(DockerContextTLSError):
        resolve(None, "tls", env)
    (tls / "key.pem").write_text("y")
    with pytest.raises(DockerContextTLSError):
        resolve(None, "tls", env)


def test_endpoints() -> None:
    assert endpoint_for("unix:///var/run/docker.sock").uds == "/var/run/docker.sock"
    tcp = endpoint_for("tcp://h:2375")
    assert (tcp.uds, tcp.base_url) == (None, "http://h:2375")
    with pytest.raises(ValueError, match="unsupported"):
        endpoint_for("ssh://h")


# ---- parameters and errors ------------------------------------------------------------


def test_httpize_and_filters() -> None:
    assert httpize({"a": True, "b": False, "c": None, "d": 3, "e": {"x": 1}}) == {
        "a": "1",
        "b": "0",
        "d": "3",
        "e": '{"x": 1}',
    }
    assert json.loads(filters_param({"label": "test", "id": ["a", "b"]}) or "") == {
        "label": ["test"],
        "id": ["a", "b"],
    }
    assert filters_param(None) is None


def test_error_types() -> None:
    e = DockerError(400, "bad thing")
    assert (e.status, e.message) == (400, "bad thing")
    assert "bad thing" in str(e)
    assert DockerError(500, {"message": "from a dict"}).message == "from a dict"
    c = DockerContainerError(500, "no start", "abc")
    assert c.container_id == "abc"
    assert isinstance(c, DockerError)
    assert isinstance(api_error(404, "gone"), DockerNotFound)
    assert isinstance(api_error(409, "busy"), DockerConflict)
    assert isinstance(DockerTimeout("slow"), TimeoutError)
    assert isinstance(DockerTimeout("slow"), DockerError)
