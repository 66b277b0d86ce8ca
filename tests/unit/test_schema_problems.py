"""The problem a decoder found, named in tidings' words whatever the decoder's own wording."""

from __future__ import annotations

import msgspec
import pytest

from tidings.domain.schema_problems import json_problem, kind_of, value_problem


class Parcel(msgspec.Struct):
    sku: str
    count: int
    note: str = ""


def refusal(document: bytes) -> msgspec.ValidationError:
    with pytest.raises(msgspec.ValidationError) as caught:
        msgspec.json.decode(document, type=Parcel)
    return caught.value


def test_the_missing_member_is_found_from_the_document_not_the_message() -> None:
    reworded = msgspec.ValidationError("the decoder says something else entirely")
    assert json_problem(reworded, b'{"sku":"a"}', Parcel, whole="data", member="field").startswith(
        "required field 'count' is missing"
    )
    assert value_problem(reworded, {"count": 1}, Parcel, whole="data", member="field").startswith(
        "required field 'sku' is missing"
    )


def test_a_path_that_cannot_be_read_falls_back_to_the_whole() -> None:
    reworded = msgspec.ValidationError("wrong somewhere, at position 7")
    problem = json_problem(reworded, b'{"sku":1,"count":1}', Parcel, whole="data", member="field")
    assert problem.startswith("data does not fit its schema")


def test_a_path_to_no_member_of_the_class_is_not_believed() -> None:
    odd = msgspec.ValidationError("Expected `str` - at `$.elsewhere`")
    problem = value_problem(odd, {"sku": 1, "count": 1}, Parcel, whole="data", member="field")
    assert problem.startswith("data does not fit its schema")


def test_the_mistyped_member_is_named() -> None:
    document = b'{"sku":"a","count":"many"}'
    problem = json_problem(refusal(document), document, Parcel, whole="envelope", member="attribute")
    assert problem.startswith("attribute 'count' has a wrong type or value")


@pytest.mark.parametrize(
    ("document", "kind"),
    [(b"[1]", "array"), (b" null", "null"), (b'"x"', "string"), (b"12", "number"), (b"true", "boolean")],
)
def test_a_document_that_is_no_object_is_named_by_its_kind(document: bytes, kind: str) -> None:
    problem = json_problem(refusal(document), document, Parcel, whole="data", member="field")
    assert problem == f"data must be an object, got {kind}"
    assert value_problem(
        refusal(document), msgspec.json.decode(document), Parcel, whole="data", member="field"
    ) == (f"data must be an object, got {kind}")


def test_kinds_never_show_the_value() -> None:
    values: list[object] = [None, True, 3, 2.5, "secret", {}, [], b"x"]
    assert [kind_of(value) for value in values] == [
        "null",
        "boolean",
        "number",
        "number",
        "string",
        "object",
        "array",
        "binary",
    ]
