"""Tokens, roles and the rate limiter of the REST API."""

from __future__ import annotations

import hmac

import pytest

from clusterai.errors import BadInput
from clusterai.service import access as auth
from clusterai.service.access import Permission, RateLimiter, TokenVerifier, new_token, split_token
from clusterai.store.open import open_store


@pytest.fixture
def store(tmp_path):
    s = open_store(tmp_path / "auth.db")
    yield s
    s.close()


def test_a_new_token_is_random_and_only_its_hash_is_stored(store):
    text, record = new_token("ci", "submitter", created_by="admin", now=100.0)
    other, _ = new_token("ci", "submitter", created_by="admin", now=100.0)
    assert text != other and text.startswith("cai_")
    token_id, secret = split_token(text)
    assert token_id == record.id and len(secret) >= 40
    assert secret not in record.secret_hash and record.secret_hash != secret
    store.add_token(record)
    stored = store.get_token(record.id)
    assert stored == record and secret not in repr(stored)


@pytest.mark.parametrize("name, role, expires", [("", "viewer", None), ("x" * 101, "viewer", None),
                                                  ("ci", "root", None), ("ci", "viewer", -5)])
def test_bad_token_requests_are_refused(name, role, expires):
    with pytest.raises(BadInput):
        new_token(name, role, created_by=None, expires_in=expires)


def test_verify_accepts_the_token_and_refuses_forgeries_revoked_and_expired_ones(store):
    text, record = new_token("ops", "operator", created_by=None, now=1000.0)
    short, short_record = new_token("temp", "viewer", created_by=None, expires_in=10, now=1000.0)
    store.add_token(record)
    store.add_token(short_record)
    verifier = TokenVerifier(store, ttl=60)
    principal = verifier.verify(text, now=1001.0)
    assert principal is not None and (principal.name, principal.role) == ("ops", "operator")
    assert principal.can(Permission.OPERATE) and not principal.can(Permission.ADMIN)
    token_id, secret = split_token(text)
    assert verifier.verify(f"cai_{token_id}_{secret[:-1]}x", now=1001.0) is None  # wrong secret
    assert verifier.verify(f"cai_ffffffffffff_{secret}", now=1001.0) is None  # unknown id
    assert verifier.verify("Bearer nonsense", now=1001.0) is None
    assert verifier.verify(short, now=1005.0) is not None
    assert verifier.verify(short, now=1011.0) is None  # expired
    store.revoke_token(record.id, 1002.0)
    assert verifier.verify(text, now=1003.0) is not None  # cached for ttl...
    verifier.forget(record.id)
    assert verifier.verify(text, now=1003.0) is None  # ...until the API that revoked it forgets it


def test_secrets_are_compared_in_constant_time_even_for_unknown_ids(store, monkeypatch):
    calls = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    text, record = new_token("a", "viewer", created_by=None)
    store.add_token(record)
    verifier = TokenVerifier(store)
    verifier.verify(text)
    verifier.verify("cai_000000000000_secret")
    assert len(calls) == 2  # one comparison per check, known id or not


def test_roles_grant_what_the_policy_says():
    allowed = {role: {p for p in Permission if p in auth.ROLE_PERMISSIONS[role]} for role in auth.ROLES}
    assert allowed["admin"] == set(Permission)
    assert allowed["viewer"] == {Permission.READ, Permission.READ_OWN}
    assert allowed["submitter"] == {Permission.READ_OWN, Permission.SUBMIT}
    assert Permission.ADMIN not in allowed["operator"] and Permission.CANCEL in allowed["operator"]


def test_rate_limiter_allows_a_burst_then_the_rate():
    limiter = RateLimiter(rate=10, burst=3)
    assert [limiter.check("t", now=0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = limiter.check("t", now=0.0)
    assert wait == pytest.approx(0.1)
    assert limiter.check("other", now=0.0) == 0.0  # buckets are per token
    assert limiter.check("t", now=0.1) == 0.0  # one request's worth came back
    assert limiter.check("t", now=0.1) > 0
    assert RateLimiter(rate=0, burst=1).check("t") == 0.0  # 0 turns it off
