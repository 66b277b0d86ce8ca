"""The policy compiled to nats-server permissions (``tidings acl nats-config``): the exact block,
the subjects each kind of principal gets, and the mistakes it refuses."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tidings.adapters.nats.names import read_patterns, read_stream
from tidings.adapters.nats.permissions import authorization_block, permissions_of
from tidings.adapters.nats.settings import NatsSettings
from tidings.adapters.nats.views import identity
from tidings.cli import app
from tidings.domain.policy import Policy, Principal
from tidings.errors import ConfigurationError

NKEY = "UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NLCNF4"
POLICY = f"""
[principals.orders]
publish = ["order.>"]
subscribe = ["payment.*"]
password = "pw.1~x"
relay = true

[principals.billing]
publish = ["invoice.created"]
nkey = "{NKEY}"
"""

EXPECTED = """\
# From shop.toml by `tidings acl nats-config`: subjects ev.<partition>.<topic>,
# streams EV_0 to EV_1. Regenerate it when the policy changes.
# Each principal reads read streams of its own (EV_<p>_R<name in hex>_<patterns digest>),
# which hold only the topics it may subscribe to; the relay principal makes them.
authorization {
  users = [
    {
      user: "orders", password: "pw.1~x"
      permissions: {
        publish: {
          allow: [
            "$JS.API.STREAM.INFO.EV_0_R6f7264657273_04d4dae1"
            "$JS.API.STREAM.INFO.EV_1_R6f7264657273_04d4dae1"
            "$JS.API.DIRECT.GET.EV_0_R6f7264657273_04d4dae1"
            "$JS.API.DIRECT.GET.EV_1_R6f7264657273_04d4dae1"
            "$JS.API.STREAM.INFO.EV_0"
            "$JS.API.STREAM.CREATE.EV_0"
            "$JS.API.STREAM.INFO.EV_1"
            "$JS.API.STREAM.CREATE.EV_1"
            "$JS.API.STREAM.MSG.GET.EV_0"
            "$JS.API.STREAM.MSG.GET.EV_1"
            "$JS.API.STREAM.CREATE.EV_0_R6f7264657273_04d4dae1"
            "$JS.API.STREAM.CREATE.EV_1_R6f7264657273_04d4dae1"
            "ev.0.>"
            "ev.1.>"
            "ev.wake"
          ]
        }
        subscribe: {
          allow: [
            "_INBOX.orders.>"
            "ev.wake"
          ]
        }
      }
    }
    {
      nkey: "UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NLCNF4"  # billing
      permissions: {
        publish: {
          deny: [
            ">"
          ]
        }
        subscribe: {
          allow: [
            "_INBOX.billing.>"
          ]
        }
      }
    }
  ]
}
"""


def test_the_block_for_a_relay_with_groups_and_a_publisher_only() -> None:
    policy = Policy.from_toml(POLICY, source="shop.toml")
    assert authorization_block(policy, prefix="ev", stream="EV", partitions=2) == EXPECTED


def _subjects(block: str) -> list[str]:
    return re.findall(r'^\s+"([^"]+)"$', block, flags=re.MULTILINE)


def test_no_principal_gets_a_blanket_wildcard() -> None:
    principal = Principal("all", publish=(">",), subscribe=(">", "*"), password="x", relay=True)
    block = authorization_block(Policy({"all": principal}), prefix="tidings", stream="TIDINGS", partitions=8)
    subjects = _subjects(block)
    assert len(subjects) > 8 * 5
    assert ">" not in subjects and "*.>" not in subjects and "$JS.API.>" not in subjects
    assert all(
        s.startswith(("$JS.API.STREAM.", "$JS.API.DIRECT.GET.", "_INBOX.", "tidings.")) for s in subjects
    )
    # Eight partitions named one by one: NATS takes no partial-token wildcards such as TIDINGS_*.
    assert [s for s in subjects if s.startswith("$JS.API.STREAM.CREATE.") and "_R" not in s] == [
        f"$JS.API.STREAM.CREATE.TIDINGS_{p}" for p in range(8)
    ]
    assert "deny" not in block and "deeper subjects" not in block  # '>' allows all '*' could leak


def test_what_each_kind_of_principal_needs() -> None:
    reader = permissions_of(Principal("r", subscribe=("order.placed",)), prefix="t", stream="S", partitions=1)
    # Its own read stream only (hex of "r" is 72), never the partition stream's every topic.
    own = read_stream("S", 0, "r", ("order.placed",))
    assert reader.publish == (f"$JS.API.STREAM.INFO.{own}", f"$JS.API.DIRECT.GET.{own}")
    assert reader.subscribe == ("_INBOX.r.>", "t.wake")
    writer = permissions_of(Principal("w", publish=("order.>",)), prefix="t", stream="S", partitions=1)
    # It publishes nothing on the bus: its events reach it through the relay (and the config
    # denies it everything rather than give it an empty allow list, which would allow all).
    assert writer.publish == ()
    assert writer.subscribe == ("_INBOX.w.>",)


@pytest.mark.parametrize(
    "patterns", [("*", "audit.>"), ("order.*",), (">",), ("payment.*", "payment.card.>")]
)
def test_no_principal_may_subscribe_to_event_subjects(patterns: tuple[str, ...]) -> None:
    """nats-server lets a subscription's '>' in through a permission's trailing '*' (``t.*.*``
    allows ``t.*.>``: every topic), and readers use direct gets on read streams: no grant on
    event subjects at all, whatever the patterns, and no deny rule or comment left over."""
    reader = Principal("r", subscribe=patterns, password="x", relay=True)
    block = authorization_block(Policy({"r": reader}), prefix="t", stream="S", partitions=2)
    subscribe = block[block.index("subscribe: {") :]
    assert _subjects(subscribe) == ["_INBOX.r.>", "t.wake"]
    assert "deny" not in subscribe and "#" not in block.split("authorization {", 1)[1]
    allowed = permissions_of(reader, prefix="t", stream="S", partitions=2)
    assert allowed.subscribe == ("_INBOX.r.>", "t.wake")


@pytest.mark.parametrize(
    ("policy", "options", "message"),
    [
        (
            Policy({"x": Principal("x")}, "p.toml"),
            {},
            "p.toml: principal 'x' has neither a password nor an nkey",
        ),
        (Policy({}, "p.toml"), {}, "p.toml: no principals"),
        (Policy({"x": Principal("x", password="p")}), {"partitions": 0}, "partitions must be at least 1"),
        (Policy({"x": Principal("x", password="p")}), {"prefix": "a.*"}, "subject prefix"),
        (Policy({"x": Principal("x", password="p")}), {"stream": "A.B"}, "stream name 'A.B'"),
        (
            Policy({n: Principal(n, password="p", relay=True) for n in ("a", "b")}, "p.toml"),
            {},
            "p.toml: principals 'a', 'b' all have relay = true",
        ),
    ],
)
def test_mistakes_are_refused(policy: Policy, options: dict[str, object], message: str) -> None:
    settings: dict[str, object] = {"prefix": "tidings", "stream": "TIDINGS", "partitions": 2, **options}
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        authorization_block(policy, **settings)  # type: ignore[arg-type]


def test_only_the_relays_principal_may_publish_on_event_subjects() -> None:
    """Junk on a partition subject costs the relay time: only the principal that relays the store
    (the one writer of its streams) may publish there, whatever the others may publish or read."""
    principals = {
        "relay": Principal("relay", publish=("order.>",), password="p", relay=True),
        "everything": Principal("everything", publish=(">",), subscribe=(">",), password="p"),
        "reader": Principal("reader", subscribe=("order.*",), password="p"),
    }
    block = authorization_block(Policy(principals), prefix="ev", stream="EV", partitions=3)
    users = block.split("    {\n")[1:]
    event_subjects = [
        [s for s in _subjects(user) if s.startswith("ev.") and s != "ev.wake"] for user in users
    ]
    assert event_subjects == [["ev.0.>", "ev.1.>", "ev.2.>"], [], []]


def test_the_command_prints_the_block(tmp_path: Path) -> None:
    path = tmp_path / "shop.toml"
    path.write_text(POLICY)
    result = CliRunner().invoke(
        app, ["acl", "nats-config", str(path), "--prefix", "ev", "--stream", "EV", "--partitions", "2"]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == EXPECTED.replace("shop.toml", str(path), 1)
    defaults = CliRunner().invoke(app, ["acl", "nats-config", str(path)])
    assert (
        defaults.exit_code == 0 and '"tidings.7.>"' in defaults.stdout and "TIDINGS_8" not in defaults.stdout
    )


def test_the_command_reports_a_bad_policy_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[principals.orders]\npublish = "order.>"\n')
    result = CliRunner().invoke(app, ["acl", "nats-config", str(path)])
    assert result.exit_code == 2
    assert "principal 'orders': publish must be a list of topic patterns" in result.stderr
    missing = CliRunner().invoke(app, ["acl", "nats-config", str(tmp_path / "none.toml")])
    assert missing.exit_code == 2 and "cannot read the access policy" in missing.stderr


def test_each_principal_gets_replies_of_its_own() -> None:
    """A direct get's reply holds events: no principal may subscribe to another's replies."""
    names = ["orders", "orders.eu", "orders-eu", "a@b"]
    prefixes = [
        permissions_of(Principal(name, subscribe=("x",)), prefix="t", stream="S", partitions=1).subscribe[0]
        for name in names
    ]
    assert prefixes == [
        "_INBOX.orders.>",
        f"_INBOX.~{b'orders.eu'.hex()}.>",
        "_INBOX.orders-eu.>",
        "_INBOX.a@b.>",
    ]
    for mine, other in itertools.permutations(prefixes, 2):  # none covers another's replies
        assert not other.removesuffix(">").startswith(mine.removesuffix(">"))


@pytest.mark.parametrize("prefix", ["_INBOX", "_INBOX.x", "$JS", "$SYS.x", "a.*", "a..b", "a b"])
def test_a_prefix_in_nats_own_subjects_or_with_wildcards_is_refused(prefix: str) -> None:
    policy = Policy({"r": Principal("r", subscribe=(">",))})
    with pytest.raises(ConfigurationError, match="subject prefix"):
        authorization_block(policy, prefix=prefix, stream="S", partitions=1)
    with pytest.raises(ConfigurationError, match="subject prefix"):
        NatsSettings.from_url(f"nats://127.0.0.1:4222?prefix={prefix}")


def test_settings_do_not_show_the_password() -> None:
    settings = NatsSettings.from_url("nats://orders:s3cret-pw@127.0.0.1:4222")
    assert "s3cret-pw" not in repr(settings)


def test_read_streams_copy_exactly_the_subjects_of_the_patterns() -> None:
    assert identity("t.0.order.placed") == "t.0.order.placed"
    assert identity("t.0.order.*.x.*") == "t.0.order.{{wildcard(1)}}.x.{{wildcard(2)}}"
    assert identity("t.0.payment.>") == "t.0.payment.>"
    names = {read_stream("S", p, who, ("x",)) for p in range(3) for who in ("a", "a.b", "a_b", "ab", "6162")}
    assert len(names) == 15 and all(re.fullmatch(r"S_\d_R[0-9a-f]+_[0-9a-f]{8}", n) for n in names)
    # Another set of patterns, another stream (and checkpoint): the same set in another order,
    # or with a pattern that another covers, the same stream.
    assert read_stream("S", 0, "a", ("x", "y")) != read_stream("S", 0, "a", ("x",))
    assert read_stream("S", 0, "a", ("y", "x")) == read_stream("S", 0, "a", ("x", "y"))
    assert read_stream("S", 0, "a", ("x.*", "x.a")) == read_stream("S", 0, "a", ("x.*",))


def test_read_patterns_drop_what_another_covers_and_refuse_partial_overlaps() -> None:
    assert read_patterns("p", ["order.>", "order.placed", "order.*", "payment.*"]) == ("order.>", "payment.*")
    assert read_patterns("p", ["a.*", "a.b"]) == ("a.*",)
    with pytest.raises(
        ConfigurationError, match=r"principal 'p': subscribe patterns 'a\.\*\.x' and 'a\.b\.\*' overlap"
    ):
        read_patterns("p", ["a.*.x", "a.b.*"])
