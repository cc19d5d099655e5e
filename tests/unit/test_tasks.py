"""clusterai.core.tasks: the registry, payload validation from signatures and models, payload text."""

from __future__ import annotations

from typing import Annotated

import pytest
import unit_tasks

from clusterai.core.model import Priority
from clusterai.core.tasks import (
    Check,
    Length,
    Range,
    get_task,
    import_task_modules,
    known_tasks,
    parse_payload_text,
    task,
)
from clusterai.errors import BadInput, ConfigError, NonRetryableError, PayloadError, UnknownTaskError

# -- validation from type hints ---------------------------------------------------------------


def test_valid_payload_is_returned_with_defaults_filled():
    assert get_task("unit.add").validate({"a": 1}) == {"a": 1, "b": 2}
    assert get_task("unit.add").validate({"a": 1, "b": 5}) == {"a": 1, "b": 5}


@pytest.mark.parametrize(
    ("payload", "field", "words"),
    [
        ({"a": "not a number"}, "a", "valid integer"),
        ({"a": 1, "b": [1]}, "b", "valid integer"),
        ({}, "a", "Field required"),
        ({"b": 3}, "a", "Field required"),
        ({"a": 1, "c": 3}, "c", "Extra inputs are not permitted"),
    ],
)
def test_invalid_payload_names_the_field(payload, field, words):
    with pytest.raises(PayloadError) as info:
        get_task("unit.add").validate(payload)
    message = str(info.value)
    assert message.startswith("task 'unit.add': ")
    assert f"{field}: " in message
    assert words in message


def test_every_bad_field_is_reported():
    with pytest.raises(PayloadError) as info:
        get_task("unit.add").validate({"a": "x", "zzz": 1})
    assert "a: " in str(info.value) and "zzz: " in str(info.value)


@pytest.mark.parametrize("payload", [[1, 2], "text", 3, None])
def test_non_object_payload_is_refused(payload):
    with pytest.raises(PayloadError, match=f"payload must be a JSON object, got {type(payload).__name__}"):
        get_task("unit.add").validate(payload)


def test_field_constraints_from_signature_defaults():
    t = get_task("unit.constrained")
    assert t.validate({"count": 10}) == {"count": 10, "label": "x"}
    for bad in (0, 11):
        with pytest.raises(PayloadError, match="count: "):
            t.validate({"count": bad})


def test_builtin_task_constraints_are_enforced():
    import_task_modules([])
    with pytest.raises(PayloadError, match="limit: "):
        get_task("primes.count").validate({"limit": 1})


def test_unannotated_any_accepts_any_json():
    t = get_task("unit.anything")
    assert t.validate({"value": {"nested": [1, None]}}) == {"value": {"nested": [1, None]}}
    assert t.validate({}) == {"value": None}


def test_schema_comes_from_the_signature():
    schema = get_task("unit.add").schema()
    assert set(schema["properties"]) == {"a", "b"}
    assert schema["required"] == ["a"]
    assert schema["properties"]["a"]["type"] == "integer"


# -- pydantic-model tasks ---------------------------------------------------------------------


def test_model_parameter_task_validates_with_the_model():
    t = get_task("unit.resize")
    assert t.model is unit_tasks.Resize
    assert not t.unpack
    assert t.validate({"width": 2, "height": 3}) == {"width": 2, "height": 3, "mode": "fit"}
    with pytest.raises(PayloadError, match="width: "):
        t.validate({"width": 0, "height": 3})
    with pytest.raises(PayloadError, match="height: Field required"):
        t.validate({"width": 2})


def test_model_parameter_task_is_called_with_the_model():
    assert get_task("unit.resize").call({"width": 4, "height": 5, "mode": "crop"}) == {
        "area": 20, "mode": "crop"}


# -- calling ----------------------------------------------------------------------------------


def test_call_unpacks_fields_as_keyword_arguments():
    assert get_task("unit.add").call({"a": 40}) == 42
    assert get_task("unit.add").call({"a": 1, "b": 1}) == 2


def test_call_with_invalid_payload_is_non_retryable():
    with pytest.raises(NonRetryableError, match="invalid payload: a: "):
        get_task("unit.add").call({"a": "x"})


def test_decorator_returns_the_function_usable_directly():
    assert unit_tasks.add(1, 1) == 2
    assert unit_tasks.add.task_name == "unit.add"


# -- registry ---------------------------------------------------------------------------------


def test_task_options_are_recorded():
    t = get_task("unit.opts")
    assert (t.queue, t.priority, t.retries, t.backoff, t.timeout) == ("gpu", Priority.HIGH, 5, 2.0, 30.0)
    assert t.resources == {"gpu": 1.0, "mem": 2.0}
    assert get_task("unit.declared").non_retryable == (KeyError,)
    plain = get_task("unit.plain")
    assert (plain.queue, plain.priority, plain.retries, plain.timeout) == (None, None, None, None)


def test_unknown_task_lists_known_tasks():
    with pytest.raises(UnknownTaskError) as info:
        get_task("unit.nope")
    err = info.value
    assert err.name == "unit.nope"
    assert "unit.add" in err.known and "unit.resize" in err.known
    assert err.known == sorted(err.known)
    assert str(err).startswith("unknown task 'unit.nope'; known tasks: ")
    assert "unit.add" in str(err)
    assert isinstance(err, BadInput)


def test_known_tasks_is_sorted_and_complete():
    names = known_tasks()
    assert names == sorted(names)
    assert {"unit.add", "unit.resize", "unit.spin"} <= set(names)


def test_default_name_is_module_and_qualname():
    def helper_fn(x: int) -> int:
        return x

    registered = task()(helper_fn)
    assert registered.task_name == f"{__name__}.test_default_name_is_module_and_qualname.<locals>.helper_fn"
    assert get_task(registered.task_name).validate({"x": 1}) == {"x": 1}


def test_registering_another_function_under_a_taken_name_is_refused():
    def impostor(a: int) -> int:
        return a

    with pytest.raises(ConfigError, match="task name 'unit.add' is registered twice"):
        task("unit.add")(impostor)
    assert get_task("unit.add").fn is unit_tasks.add


@pytest.mark.parametrize("kind", ["args", "kwargs", "positional"])
def test_parameters_must_be_plain_keywords(kind):
    def with_args(*items: int) -> None: ...

    def with_kwargs(**extra: int) -> None: ...

    def positional(a: int, /) -> None: ...

    fn = {"args": with_args, "kwargs": with_kwargs, "positional": positional}[kind]
    with pytest.raises(ConfigError, match="must be a plain keyword argument"):
        task(f"unit.bad_signature.{kind}")(fn)
    with pytest.raises(UnknownTaskError):
        get_task(f"unit.bad_signature.{kind}")


def test_invalid_task_priority_is_refused_at_registration():
    def fn() -> None: ...

    with pytest.raises(BadInput, match="invalid priority 'asap'"):
        task("unit.bad_priority", priority="asap")(fn)


def test_import_task_modules():
    import_task_modules(["unit_tasks"])
    assert {"image.filter", "primes.count", "hash.chain", "demo.flaky", "bench.noop"} <= set(known_tasks())


def test_import_of_missing_module_is_a_config_error():
    with pytest.raises(ConfigError, match="cannot import task module 'no_such_pkg.tasks'"):
        import_task_modules(["no_such_pkg.tasks"])


# -- payload text -----------------------------------------------------------------------------


def test_parse_payload_text_valid():
    assert parse_payload_text('{"a": [1, 2], "b": null}') == {"a": [1, 2], "b": None}


@pytest.mark.parametrize(
    ("text", "line", "column"),
    [
        ('{"a": 1,\n "b": }', 2, 7),
        ("{'a': 1}", 1, 2),
        ('{"a": 1', 1, 8),
        ("", 1, 1),
    ],
)
def test_parse_payload_text_broken_json_names_the_spot(text, line, column):
    with pytest.raises(PayloadError) as info:
        parse_payload_text(text)
    message = str(info.value)
    assert message.startswith("payload is not valid JSON: ")
    assert message.endswith(f"at line {line} column {column}")


# -- markers: Range, Length, Check (no pydantic needed in task modules) ---------------------------

def _even(value: int) -> int:
    if value % 2:
        raise ValueError("an even number is needed")
    return value


@task("unit.marked")
def _marked(width: Annotated[int, Range(16, 1920)] = 160,
            ratio: Annotated[float, Range(gt=0, le=1)] | None = None,
            line: Annotated[list[Annotated[float, Range(-10, 10)]], Length(4, 4)] | None = None,
            even: Annotated[int, Check(_even, description="an even number")] = 2) -> int:
    return width


def _marked_task():
    return get_task("unit.marked")


BAD_MARKED = [({"width": 40000}, "width"), ({"width": 15}, "width"), ({"ratio": 0}, "ratio"),
              ({"line": [1, 2, 3]}, "line"), ({"line": [1, 2, 3, 11]}, "line"), ({"even": 3}, "even")]


@pytest.mark.parametrize(("payload", "field"), BAD_MARKED)
def test_markers_are_payload_model_constraints(payload, field):
    definition = _marked_task()
    with pytest.raises(PayloadError, match=f"task 'unit.marked': {field}"):
        definition.validate(payload)
    assert definition.validate({"width": 16, "ratio": 1, "line": [0, 0, 10, -10], "even": 4})["width"] == 16


@pytest.mark.parametrize(("payload", "field"), BAD_MARKED)
def test_markers_are_checked_without_pydantic_too(payload, field):
    import dataclasses

    light = dataclasses.replace(_marked_task(), model=None)  # a light worker's view of the task
    with pytest.raises(PayloadError, match=f"task 'unit.marked': {field}"):
        light.validate(payload)
    with pytest.raises(NonRetryableError, match=f"invalid payload: {field}"):
        light.call(payload)
    assert light.call({"width": 16, "ratio": None, "line": [0, 0, 10, -10], "even": 4}) == 16


def test_markers_show_in_the_schema():
    props = _marked_task().schema()["properties"]
    assert (props["width"]["minimum"], props["width"]["maximum"]) == (16, 1920)
    assert props["ratio"]["anyOf"][0]["exclusiveMinimum"] == 0
    assert props["line"]["anyOf"][0]["minItems"] == props["line"]["anyOf"][0]["maxItems"] == 4
    assert props["line"]["anyOf"][0]["items"]["maximum"] == 10
    assert props["even"]["description"] == "an even number"


def test_the_video_tasks_publish_their_bounds():
    import_task_modules([])
    scan = get_task("video.scan").schema()["properties"]
    assert (scan["thumb_width"]["minimum"], scan["thumb_width"]["maximum"]) == (16, 1920)
    count = get_task("camera.count").schema()["properties"]
    assert count["checkpoint_every"]["minimum"] == 0.5 and count["line"]["anyOf"][0]["maxItems"] == 4
    assert get_task("video.logline").provenance and not get_task("video.scan").provenance
