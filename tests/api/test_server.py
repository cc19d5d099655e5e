"""What `clusterai up` runs: the API on the coordinator's event loop (HTTPS with --tls-cert/--tls-key)
and the first admin token, written to a file only its owner can read."""

from __future__ import annotations

import asyncio
import os
import ssl
from pathlib import Path

import httpx
import pytest
from test_tls import self_signed

from clusterai.api.server import ApiServer, ensure_admin_token
from clusterai.config import parse_config
from clusterai.core.net import is_loopback
from clusterai.errors import ConfigError
from clusterai.store.open import open_store


def test_the_first_admin_token_is_made_once_and_only_its_owner_can_read_it(tmp_path: Path) -> None:
    store = open_store(tmp_path / "s.db")
    token_file = tmp_path / "secret" / "admin.token"
    token_file.parent.mkdir()
    token_file.write_text("stale")
    os.chmod(token_file, 0o644)
    assert ensure_admin_token(store, token_file) == token_file
    assert token_file.stat().st_mode & 0o777 == 0o600
    text = token_file.read_text().strip()
    assert text.startswith("cai_") and text.split("_")[1] == store.list_tokens()[0].id
    assert ensure_admin_token(store, token_file) is None  # an admin exists: nothing new
    assert len(store.list_tokens()) == 1
    store.revoke_token(store.list_tokens()[0].id, 0.0)
    assert ensure_admin_token(store, token_file) == token_file  # none usable: a new one
    assert token_file.read_text().strip() != text
    store.close()


def test_up_serves_https_on_its_loop_with_the_admin_token(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    config = parse_config({"api": {"port": 0, "tls_cert": str(cert), "tls_key": str(key)}})
    store = open_store(tmp_path / "s.db")
    token = ensure_admin_token(store, tmp_path / "admin.token")
    assert token is not None
    headers = {"Authorization": f"Bearer {token.read_text().strip()}"}
    woken = []

    async def scenario() -> None:
        server = ApiServer(config, store, wake=lambda: woken.append(1))
        url = await server.start()
        assert url.startswith("https://127.0.0.1:")
        try:
            async with httpx.AsyncClient(base_url=url, verify=ssl.create_default_context(cafile=str(cert))) as c:
                assert (await c.get("/healthz")).status_code == 200
                made = await c.post("/api/v1/jobs", json={"task": "bench.noop"}, headers=headers)
                assert made.status_code == 201
            with pytest.raises(httpx.HTTPError):
                async with httpx.AsyncClient(base_url=url.replace("https", "http")) as plain:
                    await plain.get("/healthz")
        finally:
            await server.stop()

    asyncio.run(scenario())
    assert woken  # a submission wakes the coordinator
    assert store.job_counts()["queued"] == 1
    store.close()


def test_a_port_in_use_or_a_missing_certificate_is_a_clear_error(tmp_path: Path) -> None:
    store = open_store(tmp_path / "s.db")
    with pytest.raises(ConfigError, match="tls_cert: no such file"):
        ApiServer(parse_config({"api": {"tls_cert": str(tmp_path / "none.pem"),
                                        "tls_key": str(tmp_path / "none.key")}}), store)
    with pytest.raises(ConfigError, match="set both or neither"):
        parse_config({"api": {"tls_cert": "a.pem"}})

    async def scenario() -> None:
        first = ApiServer(parse_config({"api": {"port": 0}}), store)
        url = await first.start()
        try:
            taken = int(url.rsplit(":", 1)[1])
            with pytest.raises(ConfigError, match="cannot listen"):
                await ApiServer(parse_config({"api": {"port": taken}}), store).start()
        finally:
            await first.stop()

    asyncio.run(scenario())
    store.close()


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("localhost", True), ("::1", True),
                                            ("0.0.0.0", False), ("10.1.2.3", False), ("head.local", False)])
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_status_carries_alerts_and_the_dask_dashboard_link(tmp_path: Path) -> None:
    from api_support import running_api

    settings = {"alerts": {"queue_size": 1}}
    with running_api(tmp_path / "a", settings, dask_dashboard="http://127.0.0.1:8787/status") as api:
        c = api.client("viewer")
        api.add_job()
        api.add_job()
        status = c.get("/api/v1/cluster/status").json()
        assert status["dask_dashboard"] == "http://127.0.0.1:8787/status"
        assert [a["kind"] for a in status["alerts"]] == ["queue"]
        assert len(c.get("/api/v1/cluster/history", params={"minutes": 5}).json()["minutes"]) == 5
    with running_api(tmp_path / "b") as api:
        assert api.client("viewer").get("/api/v1/cluster/status").json()["dask_dashboard"] is None
