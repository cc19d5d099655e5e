"""errors.py is the one table: every error's code is unique, and an API answer rebuilds the error it
stands for, with its fields (what the remote client does)."""

from __future__ import annotations

import inspect

import pytest

from clusterai import errors
from clusterai.errors import (
    AuthRefused,
    BackendsBusy,
    ClusterAIError,
    IdempotencyConflict,
    JobFailed,
    JobNotFound,
    LimitReached,
    NestedTooDeep,
    RemoteError,
    RequestInvalid,
    RunNotFound,
    StoreUnavailable,
    UnknownTaskError,
    WorkerNotFound,
    error_body,
    from_answer,
)

ALL = [c for _, c in inspect.getmembers(errors, inspect.isclass) if issubclass(c, ClusterAIError)]


def test_every_error_has_its_own_code_status_and_exit_code() -> None:
    codes = [c.code for c in ALL if "code" in c.__dict__]
    assert len(codes) == len(set(codes))
    for cls in ALL:
        assert 400 <= cls.http_status <= 599 and cls.exit_code in (1, 2, 3, 4, 5), cls
    assert {c.__name__ for c in ALL if "code" not in c.__dict__} == {"TryLater"}  # a base, never raised


def test_a_second_class_cannot_take_a_code() -> None:
    with pytest.raises(TypeError, match="taken by JobNotFound"):
        type("Again", (ClusterAIError,), {"code": "job_not_found"})


@pytest.mark.parametrize("error", [
    UnknownTaskError("nope", ["b", "a"]), IdempotencyConflict("k1", 7), JobNotFound(3), RunNotFound(4),
    WorkerNotFound("w9", ["w1", "w2"]), NestedTooDeep(64, "the payload"), LimitReached("slow down", 2.5),
    BackendsBusy("busy", 1.0), AuthRefused("role 'viewer' may not do this", 403),
    RequestInvalid([{"field": "body.task", "message": "Field required"}]), JobFailed(5, "dead", "boom"),
    StoreUnavailable("down"),
])
def test_an_answer_rebuilds_its_error_with_its_fields(error: ClusterAIError) -> None:
    body = error_body(error)
    assert body["code"] == error.code and body["error"] == str(error)
    again = from_answer(body["code"], body["error"], body, error.http_status)
    assert type(again) is type(error) and str(again) == str(error)
    assert again.details() == error.details()


def test_an_unknown_or_incomplete_answer_is_a_remote_error() -> None:
    assert isinstance(from_answer("no_such_code", "odd", {}, 418), RemoteError)
    assert isinstance(from_answer(None, "proxy page", {}, 502), RemoteError)
    broken = from_answer("job_not_found", "no job", {}, 404)  # no "job" field to rebuild it from
    assert isinstance(broken, RemoteError) and broken.status == 404
