"""Access policies: parsing (every mistake a clear error naming the file, the principal and the
key), what a principal may do, and how an App picks its policy and principal."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.adapters.registry import open_store
from tidings.app import App
from tidings.domain.policy import Policy, Principal, SecurityDenied
from tidings.errors import AccessDenied, ConfigurationError, TidingsError
from tidings.runtime.access import Guard, load_policy
from tidings.runtime.codec import Codec

NKEY = "UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NLCNF4"

POLICY = """
[principals.orders]
publish = ["order.>"]
subscribe = ["payment.*", "inventory.reserved"]
password = "orders-secret"
relay = true

[principals.payments]
publish = ["payment.*"]
subscribe = ["order.placed"]
nkey = "UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NLCNF4"

[principals.silent]
"""


def test_a_policy_parses_into_principals() -> None:
    policy = Policy.from_toml(POLICY, source="shop.toml")
    orders = policy.principal("orders")
    assert orders == Principal(
        name="orders",
        publish=("order.>",),
        subscribe=("payment.*", "inventory.reserved"),
        password="orders-secret",
        relay=True,
    )
    assert policy.principal("payments").nkey == NKEY and not policy.principal("payments").relay
    silent = policy.principal("silent")
    assert silent.publish == silent.subscribe == () and silent.password is None
    assert "orders-secret" not in repr(orders)  # a principal in a log line shows no password


def test_what_a_principal_may_do() -> None:
    orders = Policy.from_toml(POLICY).principal("orders")
    assert orders.may_publish("order.placed") and orders.may_publish("order.eu.cancelled")
    assert not orders.may_publish("order") and not orders.may_publish("payment.charged")
    assert orders.may_subscribe("payment.*") and orders.may_subscribe("payment.charged")
    assert orders.may_subscribe("inventory.reserved")
    assert not orders.may_subscribe("payment.>") and not orders.may_subscribe("inventory.*")
    silent = Policy.from_toml(POLICY).principal("silent")
    assert not silent.may_publish("order.placed") and not silent.may_subscribe(">")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("principals = 3", "shop.toml: principals must be a table"),
        ("[roles.orders]", "shop.toml: unknown key 'roles'"),
        ("[principals]\norders = 1", "shop.toml: principal 'orders': expected a table"),
        ('[principals."a b"]', "shop.toml: principal 'a b': a name may contain only"),
        ("[principals.orders]\npublsh = []", "shop.toml: principal 'orders': unknown key 'publsh'"),
        (
            '[principals.orders]\npublish = "order.>"',
            "shop.toml: principal 'orders': publish must be a list of topic patterns",
        ),
        (
            "[principals.orders]\nsubscribe = [1]",
            "shop.toml: principal 'orders': subscribe: 1 is not a topic pattern",
        ),
        (
            '[principals.orders]\npublish = ["order.>.x"]',
            "shop.toml: principal 'orders': publish: pattern 'order.>.x'",
        ),
        (
            '[principals.orders]\nsubscribe = ["order..placed"]',
            "shop.toml: principal 'orders': subscribe: 'order..placed': empty token",
        ),
        ('[principals.orders]\nrelay = "yes"', "shop.toml: principal 'orders': relay must be true or false"),
        ('[principals.orders]\npassword = ""', "shop.toml: principal 'orders': password must be"),
        ('[principals.orders]\npassword = "p@ss"', "shop.toml: principal 'orders': password must be"),
        ('[principals.orders]\nnkey = "SUAXYZ"', "shop.toml: principal 'orders': nkey must be a public"),
        (
            f'[principals.orders]\npassword = "x"\nnkey = "{NKEY}"',
            "shop.toml: principal 'orders': give a password or an nkey, not both",
        ),
        ("[principals.orders", "shop.toml: not valid TOML"),
    ],
)
def test_mistakes_are_clear_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        Policy.from_toml(text, source="shop.toml")


def test_an_unknown_principal_is_named_with_the_known_ones() -> None:
    with pytest.raises(
        ConfigurationError,
        match=r"shop\.toml: unknown principal 'billing' \(the policy names: orders, payments, silent\)",
    ):
        Policy.from_toml(POLICY, source="shop.toml").principal("billing")


def test_load_policy_reads_a_file_and_names_it(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(POLICY)
    policy = load_policy(path)
    assert policy.source == str(path) and set(policy.principals) == {"orders", "payments", "silent"}
    assert load_policy(policy) is policy
    with pytest.raises(
        ConfigurationError, match=re.escape(f"cannot read the access policy {tmp_path / 'nope.toml'}")
    ):
        load_policy(tmp_path / "nope.toml")
    path.write_text("[principals.x]\nrelay = 1\n")
    with pytest.raises(ConfigurationError, match=re.escape(f"{path}: principal 'x': relay")):
        load_policy(str(path))


def test_the_guard_denies_with_an_error_naming_principal_operation_and_topic() -> None:
    moment = datetime(2026, 1, 2, tzinfo=UTC)
    guard = Guard(Policy.from_toml(POLICY), "orders", lambda: moment)
    guard.check_publish("order.placed")
    guard.check_subscribe("payment.*")
    assert guard.pending == 0
    with pytest.raises(AccessDenied) as publish:
        guard.check_publish("payment.charged")
    assert str(publish.value) == (
        "principal 'orders' may not publish to topic 'payment.charged' (denied by the access policy)"
    )
    assert (publish.value.principal, publish.value.operation, publish.value.topic) == (
        "orders",
        "publish",
        "payment.charged",
    )
    with pytest.raises(AccessDenied, match=r"principal 'orders' may not subscribe to pattern 'payment\.>'"):
        guard.check_subscribe("payment.>")
    assert isinstance(publish.value, TidingsError)
    assert guard.pending == 2


def test_an_app_runs_as_its_name_or_its_principal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(POLICY)
    store = f"sqlite:///{tmp_path / 's.db'}"
    assert App("orders", store=store, policy=path).guard is not None
    assert App("orders-1", store=store, policy=path, principal="orders").principal == "orders"
    assert App("anything", store=store).guard is None  # no policy: everything allowed
    with pytest.raises(ConfigurationError, match=r"unknown principal 'billing'"):
        App("billing", store=store, policy=path)
    monkeypatch.setenv("TIDINGS_PRINCIPAL", "payments")
    app = App("orders", store=store, policy=path)
    assert app.principal == "payments" and app.guard is not None and app.guard.principal.name == "payments"
    monkeypatch.delenv("TIDINGS_PRINCIPAL")
    monkeypatch.setenv("TIDINGS_POLICY", str(path))
    assert App("orders", store=store).guard is not None
    with pytest.raises(ConfigurationError, match=r"unknown principal 'billing'"):
        App("billing", store=store)
    monkeypatch.setenv("TIDINGS_POLICY", str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigurationError, match="cannot read the access policy"):
        App("orders", store=store, policy=Policy.from_toml(POLICY))


async def test_a_denial_the_store_cannot_take_is_kept_and_recorded_once_later(tmp_path: Path) -> None:
    moment = datetime(2026, 1, 2, tzinfo=UTC)
    guard = Guard(Policy.from_toml(POLICY), "payments", lambda: moment)
    with pytest.raises(AccessDenied):
        guard.check_publish("order.placed")
    store = open_store(f"sqlite:///{tmp_path / 's.db'}")
    codec = Codec(source="payments")
    assert await guard.record(store, codec) == 0  # not open: nothing written, nothing lost
    assert guard.pending == 1
    await store.open()
    try:
        assert await guard.record(store, codec) == 1
        assert await guard.record(store, codec) == 0
        (record,) = await store.read_stream("security-denied-payments")
        assert codec.decode(record.envelope) == SecurityDenied(
            principal="payments", operation="publish", topic="order.placed", time=moment
        )
        assert record.envelope.topic == "security.denied" and record.envelope.time == moment
    finally:
        await store.close()


@pytest.mark.parametrize(
    "text",
    [
        '[[principals.orders]]\npassword = "hunter2-secret"',  # an array of tables, not a table
        '[principals.orders]\nsubscribe = { password = "hunter2-secret" }',
        '[principals.orders]\nrelay = "hunter2-secret"',
    ],
)
def test_a_value_in_the_wrong_place_is_described_not_shown(text: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Policy.from_toml(text, source="shop.toml")
    assert "hunter2" not in str(caught.value) and "shop.toml: principal 'orders'" in str(caught.value)


def test_a_password_may_be_given_as_its_bcrypt_hash() -> None:
    """nats-server takes bcrypt hashes: a policy that every service reads need hold no password
    that logs in anywhere."""
    hashed = "$2a$11$" + "a" * 22 + "b" * 31
    policy = Policy.from_toml(f'[principals.orders]\npassword = "{hashed}"\n', source="shop.toml")
    assert policy.principal("orders").password == hashed
    with pytest.raises(ConfigurationError, match="bcrypt"):
        Policy.from_toml('[principals.orders]\npassword = "$2a$11$short"\n', source="shop.toml")


@settings(max_examples=300, deadline=None)
@given(
    st.text(max_size=200)
    | st.builds(
        lambda name, key, value: f"[principals.{name}]\n{key} = {value}\n",
        st.from_regex(r"[a-z][a-z0-9_.@-]{0,8}", fullmatch=True),
        st.sampled_from(["publish", "subscribe", "password", "nkey", "relay", "other"]),
        st.sampled_from(['["a.>"]', '"x"', "1", "true", '["a..b"]', "[1]", "{ a = 1 }", '["*"]']),
    )
)
def test_any_policy_text_is_a_policy_or_a_configuration_error(text: str) -> None:
    try:
        policy = Policy.from_toml(text, source="fuzz.toml")
    except ConfigurationError:
        return  # never another exception
    for principal in policy.principals.values():
        assert principal.may_publish("a.b") in (True, False)
