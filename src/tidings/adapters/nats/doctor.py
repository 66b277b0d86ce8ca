"""What the durability doctor asks JetStream about tidings' streams (the partition streams, and
the read streams of a policy's principals): where they keep messages, on how many servers, how
long they remember an event id, and whether they may delete events that groups have not read
(``retention.py``'s check, the one the bus makes at open).

Read only: the streams are looked at by name (``<stream>_<partition>``, and the read streams'
``<stream>_<partition>_R...`` among the account's stream names), never made or changed.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from urllib.parse import urlsplit

import nats
from nats.aio.client import Client
from nats.js.api import StorageType, StreamInfo
from nats.js.errors import NotFoundError, ServiceUnavailableError

from tidings.adapters.nats.bus import DRIVER_ERRORS
from tidings.adapters.nats.names import inbox_prefix
from tidings.adapters.nats.publish import ACK_TIMEOUT
from tidings.adapters.nats.retention import dropping_settings
from tidings.adapters.nats.settings import NatsSettings
from tidings.domain.findings import Finding, Level
from tidings.errors import BackendUnavailable, describe

#: A check of one stream: the finding it makes of it, with ``{streams}`` for the streams'
#: names (streams that share a finding share one line).
StreamCheck = Callable[[StreamInfo], Finding | None]


async def examine_jetstream(settings: NatsSettings, partitions: int) -> list[Finding]:
    """The findings about tidings' streams for a store with ``partitions`` partitions: its
    partition streams and the read streams made of them."""
    seen: list[Exception] = []
    tls = settings.tls_context()

    async def note(error: Exception) -> None:  # said once, below, not printed by the client
        seen.append(error)

    try:
        client = await asyncio.wait_for(
            nats.connect(
                servers=list(settings.servers),
                connect_timeout=settings.connect_timeout,
                allow_reconnect=False,
                max_reconnect_attempts=0,
                tls=tls,
                tls_hostname=urlsplit(settings.servers[0]).hostname if tls else None,
                inbox_prefix=inbox_prefix(urlsplit(settings.servers[0]).username),
                error_cb=note,
            ),
            settings.connect_timeout * (len(settings.servers) + 1),
        )
    except DRIVER_ERRORS as exc:
        # A timeout says nothing of its own: the client's last error says why.
        cause = seen[-1] if seen and isinstance(exc, TimeoutError) else exc
        raise BackendUnavailable(f"NATS at {settings.display_url}: {describe(cause)}") from None
    try:
        peers = _cluster_size(client)
        streams, missing, silent = await _partition_streams(client, settings, partitions)
        names = await _read_stream_names(client, settings, partitions)
        views, _, silent_views = await _streams_named(client, names)
        streams, silent = streams + views, silent + silent_views
    except DRIVER_ERRORS as exc:
        raise BackendUnavailable(f"NATS at {settings.display_url}: {describe(exc)}") from None
    finally:
        await client.close()
    findings: list[Finding] = []
    if missing:
        findings.append(
            Finding(
                "jetstream.streams",
                Level.INFO,
                f"{_listed(missing)} not made yet",
                "the relay's App makes the partition streams the first time it opens the bus; "
                "until then there is nothing on the bus to check",
                f"open an App with bus={settings.display_url} (tidings run), then run the doctor again",
            )
        )
    if silent:
        findings.append(
            Finding(
                "jetstream.leader",
                Level.WARNING,
                f"{_listed(silent)} did not answer",
                "a stream without a leader (being elected, or its replicas' quorum lost) takes no "
                "publish: the relay waits and groups read nothing new until it has one again; "
                "the store keeps the events meanwhile",
                "run the doctor again in a moment; if it persists, bring the streams' servers back "
                "(`nats stream info NAME` shows its cluster)",
            )
        )
    checks: list[StreamCheck] = [
        _storage,
        lambda info: _replicas(info, peers),
        lambda info: _duplicate_window(info, settings.duplicate_window),
        _retention,
    ]
    for check in checks:
        findings += _shared(check, streams)
    return findings


def _cluster_size(client: Client) -> int:
    """The servers of the cluster the client is connected to, as the server advertises them to
    clients (its INFO's ``connect_urls``, itself included; 1 outside a cluster). The client has
    no public accessor for the INFO it was greeted with."""
    info = client._server_info
    if not info.get("cluster"):
        return 1
    return max(1, len(info.get("connect_urls") or []))


async def _partition_streams(
    client: Client, settings: NatsSettings, partitions: int
) -> tuple[list[StreamInfo], list[str], list[str]]:
    return await _streams_named(client, [settings.stream_of(p) for p in range(partitions)])


async def _read_stream_names(client: Client, settings: NatsSettings, partitions: int) -> list[str]:
    """The read streams that the relay's App made for the principals of a policy
    (``views.py``): ``<stream>_<partition>_R<principal in hex>_<digest>``, found among the
    names of every stream of the account (none if the user may not list them)."""
    shape = re.compile(rf"{re.escape(settings.stream)}_(\d+)_R[0-9a-f]+_[0-9a-f]{{8}}")
    names: list[str] = []
    offset = 0
    while True:
        try:
            reply = await client.request("$JS.API.STREAM.NAMES", json.dumps({"offset": offset}).encode())
            page = json.loads(reply.data)
        except (*DRIVER_ERRORS, ValueError):
            return names  # not allowed, or not answered: the partition streams are checked all the same
        listed = page.get("streams") or []
        names += [n for n in listed if (m := shape.fullmatch(n)) and int(m.group(1)) < partitions]
        offset += len(listed)
        if not listed or offset >= int(page.get("total", 0)):
            return sorted(names)


async def _streams_named(client: Client, names: list[str]) -> tuple[list[StreamInfo], list[str], list[str]]:
    """The streams' info; the names of those that do not exist, and of those that did not
    answer (a stream's info comes from its leader)."""
    js = client.jetstream()
    found, missing, silent = [], [], []
    for name in names:
        try:
            found.append(await js.stream_info(name))
        except NotFoundError:
            missing.append(name)
        except (TimeoutError, ServiceUnavailableError):  # nats-py's own timeout is one too
            silent.append(name)
    return found, missing, silent


def _shared(check: StreamCheck, streams: list[StreamInfo]) -> list[Finding]:
    """``check`` over every stream; streams with the same finding share one."""
    by_finding: dict[Finding, list[str]] = {}
    for info in streams:
        if (finding := check(info)) is not None:
            by_finding.setdefault(finding, []).append(info.config.name or "?")
    return [
        Finding(f.check, f.level, f.found.format(streams=_listed(names)), f.why, f.fix)
        for f, names in by_finding.items()
    ]


def _listed(names: list[str]) -> str:
    shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    return f"stream{'s' if len(names) > 1 else ''} {shown}"


def _storage(info: StreamInfo) -> Finding | None:
    if info.config.storage != StorageType.MEMORY:
        return None
    return Finding(
        "jetstream.storage",
        Level.ERROR,
        "{streams}: memory storage",
        "a stream in memory loses every event it holds when its servers restart; groups that had "
        "not read them never will (the store keeps them, but the relay does not publish again "
        "what the stream acknowledged)",
        "delete the streams (no App running) and let the relay's App make them again: tidings "
        "makes file streams",
    )


def _replicas(info: StreamInfo, peers: int) -> Finding | None:
    replicas = info.config.num_replicas or 1
    if replicas > peers:
        return Finding(
            "jetstream.replicas",
            Level.ERROR,
            f"{{streams}}: {replicas} replicas, but the cluster shows {peers} server"
            f"{'s' if peers > 1 else ''}",
            "a stream without the servers for its replicas has lost them, or its quorum: it "
            "accepts nothing, or one more failure loses what it holds",
            "bring the cluster's servers back, or lower the streams' replicas "
            "(`nats stream edit NAME --replicas N`) and the bus URL's ?replicas=",
        )
    if replicas == 1 and peers > 1:
        return Finding(
            "jetstream.replicas",
            Level.WARNING,
            f"{{streams}}: 1 replica on a cluster of {peers} servers",
            "the stream lives on one server: while it is down the relay cannot publish and groups "
            "cannot read, and if its disk is lost the events on it are lost from the bus",
            "set the streams' replicas to 3 (`nats stream edit NAME --replicas 3`) and give the bus "
            "URL ?replicas=3, so that streams made later get them too",
        )
    return None


def _duplicate_window(info: StreamInfo, configured: float) -> Finding | None:
    window = info.config.duplicate_window or 0
    if window >= ACK_TIMEOUT:
        return None
    return Finding(
        "jetstream.duplicate_window",
        Level.WARNING,
        f"{{streams}}: duplicate window {window:g} s",
        "the relay makes each publish exactly-once by the sequence the stream must be at; the "
        "window (by event id) is the second guard, for a publish repeated after its "
        f"acknowledgement was lost, and the relay waits {ACK_TIMEOUT:g} s for one: a window "
        "shorter than that cannot catch the repeat",
        f"`nats stream edit NAME --dupe-window {configured:g}s` (tidings makes its streams with "
        f"the bus URL's ?duplicate_window=, {configured:g} s here; at least {ACK_TIMEOUT:g} s)",
    )


def _retention(info: StreamInfo) -> Finding | None:
    dropping = dropping_settings(info.config)
    if dropping is None:
        return None
    return Finding(
        "jetstream.retention",
        Level.ERROR,
        f"{{streams}}: {dropping}",
        "the server deletes events that consumer groups have not read yet; the bus refuses to "
        "open on such a stream",
        "remove the limit, or set discard new, so that the server refuses publishes at the "
        "limit instead (the relay waits, nothing is lost)",
    )
