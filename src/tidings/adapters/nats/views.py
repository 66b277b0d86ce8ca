"""Read streams: with an access policy, each principal reads a stream of its own per partition
that holds only the topics it may subscribe to.

A partition stream holds every topic, and a direct get can return any message of it: with
permissions on direct gets alone, the server could not keep a principal from reading topics its
policy does not allow. So the relay's App (which holds the policy) makes, for each principal with
``subscribe`` patterns and each partition, a stream ``<stream>_<p>_R<principal in hex>`` that
*sources* the partition stream through one identity subject transform per pattern: the server
itself copies exactly the allowed topics, in the partition's order, and each principal may read
its own streams only (``permissions.py``). Copies cost storage (once per principal that reads a
topic) and a moment of lag behind the partition stream.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Final

from nats.aio.client import Client

from tidings.errors import BackendUnavailable, ConfigurationError

API_TIMEOUT: Final = 5.0


def identity(pattern: str) -> str:
    """The destination of a subject transform that leaves the subjects a pattern matches as they
    are: each ``*`` comes back as the token it matched; a trailing ``>`` carries over."""
    count, parts = 0, []
    for part in pattern.split("."):
        if part == "*":
            count += 1
            parts.append(f"{{{{wildcard({count})}}}}")
        else:
            parts.append(part)
    return ".".join(parts)


def read_stream_config(
    name: str, source: str, subjects: Sequence[str], *, replicas: int, metadata: Mapping[str, str]
) -> dict[str, Any]:
    return {
        "name": name,
        "storage": "file",
        "num_replicas": replicas,
        "allow_direct": True,
        "metadata": dict(metadata),
        "sources": [
            {"name": source, "subject_transforms": [{"src": s, "dest": identity(s)} for s in subjects]}
        ],
    }


async def ensure_read_stream(client: Client, config: dict[str, Any], whose: str, *, create: bool) -> None:
    """Create the read stream (``create``: the relay's App), or check that it exists and was made
    for this store and these partitions (its metadata)."""
    name = config["name"]
    what = f"JetStream read stream {name!r} of principal {whose!r}"
    info = await _api(client, f"$JS.API.STREAM.INFO.{name}", None)
    missing = info.get("error", {}).get("err_code") == 10059  # stream not found
    if "error" in info and not missing:
        raise BackendUnavailable(f"{what}: {info['error'].get('description')}")
    if missing and not create:
        raise BackendUnavailable(
            f"{what} does not exist yet: an App of the relay principal makes the read streams "
            "when it opens the bus (after a policy change too); open one first"
        )
    if missing:
        answer = await _api(client, f"$JS.API.STREAM.CREATE.{name}", config)
        if "error" in answer:
            raise ConfigurationError(f"{what}: creating it was refused: {answer['error'].get('description')}")
        return
    made_for = info["config"].get("metadata") or {}
    expected = config["metadata"]
    if any(made_for.get(key) != value for key, value in expected.items()) or _filters(
        info["config"]
    ) != _filters(config):
        raise ConfigurationError(
            f"{what} was made for another store or partition count ({made_for}; this one is "
            f"{expected}): delete it (its partition streams were made anew) and open the relay's App"
        )


def _filters(config: Mapping[str, Any]) -> list[tuple[str, list[str]]]:
    return [
        (source.get("name", ""), sorted(t.get("src", "") for t in source.get("subject_transforms") or []))
        for source in config.get("sources") or []
    ]


async def _api(client: Client, subject: str, body: dict[str, Any] | None) -> dict[str, Any]:
    payload = b"" if body is None else json.dumps(body).encode()
    reply = await client.request(subject, payload, timeout=API_TIMEOUT)
    answer: dict[str, Any] = json.loads(reply.data)
    return answer
