"""A client for a cluster reached over its REST API: the same methods as `Client`, over HTTP(S)
with a bearer token. `clusterai.connect(url=..., token=...)` returns one, and every CLI command
uses one when given --url (or CLUSTERAI_URL)."""

from __future__ import annotations

import builtins
import hashlib
import json
import ssl
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from clusterai.core.artifacts import ArtifactCorrupt
from clusterai.core.model import Job, State, WorkerRecord, job_from_dict
from clusterai.errors import AuthRefused, BadInput, JobFailed, JobNotFound, ResultTimeout, Unreachable, from_answer

JobRef = int | Job
_LONG_POLL = 30.0


def _job_id(job: JobRef) -> int:
    return job.id if isinstance(job, Job) else int(job)


def _worker(data: dict[str, Any]) -> WorkerRecord:
    return WorkerRecord(**data)


def _raise_for(response: httpx.Response) -> None:
    """The clusterai error an answer stands for, rebuilt from its code (errors.py's one table)."""
    if response.status_code < 400:
        return
    try:
        body = response.json()
        message = str(body.get("error") or body)
    except ValueError:
        body, message = {}, response.text[:500]
    status = response.status_code
    if status in (401, 403) and body.get("code") is None:  # a proxy's, not ours: still a refusal
        raise AuthRefused(message, status)
    raise from_answer(body.get("code"), message, body if isinstance(body, dict) else {}, status)


class RemoteClient:
    def __init__(self, url: str, token: str, *, ca_cert: str | None = None, timeout: float = 60.0):
        """`ca_cert`: a PEM file of the CA (or the self-signed certificate) the cluster's HTTPS uses;
        default: the system's trusted CAs."""
        if not url.startswith(("http://", "https://")):
            raise BadInput(f"--url must start with http:// or https://, got {url!r}")
        if not token:
            raise BadInput("a token is required to reach a cluster over its API (--token or CLUSTERAI_TOKEN)")
        self.url = url.rstrip("/")
        verify: ssl.SSLContext | bool = True
        if ca_cert:
            try:
                verify = ssl.create_default_context(cafile=ca_cert)
            except (OSError, ssl.SSLError) as exc:
                raise BadInput(f"CA certificate {ca_cert!r} cannot be used: {exc}") from None
        self.pipelines = RemotePipelines(self._call)
        self.sweeps = RemoteSweeps(self._call)
        self.registry = RemoteRegistry(self._call, self._raw)
        self._http = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token.strip()}"},
                                  verify=verify, timeout=timeout)

    def sweep(self, objective: str, space: dict[str, Any], trials: int, *, sampler: str | dict[str, Any] | None = None,
              wait: bool = False, timeout: float | None = None, **options: Any) -> dict[str, Any]:
        """Start a sweep (POST /api/v1/sweeps); with wait=True, its status once it has finished."""
        raw: dict[str, Any] = {"objective": objective, "space": space, "trials": trials, **options}
        if sampler is not None:
            raw["sampler"] = sampler
        started = self.sweeps.start(raw)
        return self.sweeps.wait(started["id"], timeout) if wait else started

    def _raw(self, path: str) -> httpx.Response:
        try:
            response = self._http.get(path)
        except httpx.TransportError as exc:
            raise Unreachable(f"cannot reach the clusterai API at {self.url}: {exc}") from None
        _raise_for(response)
        return response

    def _call(self, method: str, path: str, *, timeout: float | None = None, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, timeout=timeout or self._http.timeout, **kwargs)
        except httpx.TransportError as exc:
            raise Unreachable(f"cannot reach the clusterai API at {self.url}: {exc}") from None
        _raise_for(response)
        return response.json() if response.content else None

    # -- submitting ---------------------------------------------------------------------------

    def submit(self, task: str, payload: dict[str, Any] | None = None, **options: Any) -> Job:
        body = {"task": task, "payload": payload or {}, **_options(options)}
        return job_from_dict(self._call("POST", "/api/v1/jobs", json=body))

    def submit_many(self, task: str, payloads: Sequence[dict[str, Any]], **options: Any) -> list[Job]:
        """All stored or none; returns the jobs (read back in one call per 1,000)."""
        opts = _options(options)
        answer = self._call("POST", "/api/v1/jobs", json={"jobs": [{"task": task, "payload": p, **opts}
                                                                   for p in payloads]})
        return self.get_many(answer["ids"])

    # -- reading ------------------------------------------------------------------------------

    def get(self, job: JobRef) -> Job:
        return job_from_dict(self._call("GET", f"/api/v1/jobs/{_job_id(job)}"))

    def get_many(self, jobs: Sequence[JobRef]) -> builtins.list[Job]:
        """Jobs by id, in the order given, without their attempt history (1,000 per call)."""
        ids = [_job_id(j) for j in jobs]
        found: dict[int, Job] = {}
        for start in range(0, len(ids), 1000):
            chunk = ids[start:start + 1000]
            answer = self._call("GET", "/api/v1/jobs", params={"ids": ",".join(map(str, chunk))})
            found.update((d["id"], job_from_dict(d)) for d in answer["jobs"])
        missing = [i for i in ids if i not in found]
        if missing:
            raise JobNotFound(missing[0])
        return [found[i] for i in ids]

    def list(self, *, state: State | str | None = None, task: str | None = None, queue: str | None = None,
             worker: str | None = None, after_id: int | None = None, limit: int = 100) -> builtins.list[Job]:
        """Oldest first from after_id, like Client.list."""
        params = {"state": State(state).value if state else None, "task": task, "queue": queue, "worker": worker,
                  "order": "asc", "cursor": after_id, "limit": limit}
        answer = self._call("GET", "/api/v1/jobs", params={k: v for k, v in params.items() if v is not None})
        return [job_from_dict(j) for j in answer["jobs"]]

    def dead_letters(self, limit: int = 100) -> builtins.list[Job]:
        out: builtins.list[Job] = []
        cursor = None
        while len(out) < limit:
            params: dict[str, Any] = {"limit": min(1000, limit - len(out))}
            if cursor is not None:
                params["cursor"] = cursor
            answer = self._call("GET", "/api/v1/dlq", params=params)
            out += [job_from_dict(j) for j in answer["jobs"]]
            cursor = answer["next_cursor"]
            if cursor is None:
                break
        return out

    def workers(self) -> builtins.list[WorkerRecord]:
        return [_worker(w) for w in self._call("GET", "/api/v1/workers", params={"all": "true"})["workers"]]

    def counts(self) -> dict[str, int]:
        return dict(self.status()["jobs"])

    def status(self, window: float = 60.0) -> dict[str, Any]:
        return dict(self._call("GET", "/api/v1/cluster/status", params={"window": window}))

    def tasks(self) -> builtins.list[dict[str, Any]]:
        return list(self._call("GET", "/api/v1/tasks")["tasks"])

    # -- waiting ------------------------------------------------------------------------------

    def wait(self, jobs: Sequence[JobRef], timeout: float | None = None) -> None:
        """Block until every job has ended; ResultTimeout if they have not by then."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for job in jobs:
            while True:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise ResultTimeout(f"job {_job_id(job)} still unfinished after {timeout} s")
                hold = _LONG_POLL if left is None else min(_LONG_POLL, left)
                data = self._call("GET", f"/api/v1/jobs/{_job_id(job)}", params={"wait": round(hold, 3)},
                                  timeout=hold + 30)
                if State(data["state"]).terminal:
                    break

    def result(self, job: JobRef, timeout: float | None = None) -> Any:
        self.wait([job], timeout)
        done = self.get(job)
        if done.state is not State.SUCCEEDED:
            raise JobFailed(done.id, done.state.value, done.error)
        return done.result

    # -- operator actions ---------------------------------------------------------------------

    def cancel(self, job: JobRef) -> Job:
        return job_from_dict(self._call("DELETE", f"/api/v1/jobs/{_job_id(job)}"))

    def retry(self, job: JobRef) -> Job:
        return job_from_dict(self._call("POST", f"/api/v1/jobs/{_job_id(job)}/retry"))

    def requeue_dead(self, ids: Sequence[int] = (), *, everything: bool = False) -> builtins.list[int]:
        body = {"all": True} if everything else {"ids": builtins.list(ids)}
        return builtins.list(self._call("POST", "/api/v1/dlq/requeue", json=body)["requeued"])

    def command_worker(self, worker: str, action: str, wait: float = 10.0) -> str | None:
        answer = self._call("POST", f"/api/v1/workers/{worker}/{action}", params={"wait": wait},
                            timeout=wait + 30)
        return answer.get("outcome") if answer.get("done") else None

    # -- tokens (admin) -----------------------------------------------------------------------

    def create_token(self, name: str, role: str, expires_in: float | None = None, *,
                     uses: int | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"name": name, "role": role}
        if uses is not None:
            body["uses"] = uses
        if expires_in is not None:
            body["expires_in"] = expires_in
        return dict(self._call("POST", "/api/v1/tokens", json=body))

    def list_tokens(self) -> builtins.list[dict[str, Any]]:
        return builtins.list(self._call("GET", "/api/v1/tokens")["tokens"])

    def revoke_token(self, token_id: str) -> dict[str, Any]:
        return dict(self._call("DELETE", f"/api/v1/tokens/{token_id}"))

    def audit(self, limit: int = 100, actor: str | None = None) -> builtins.list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit}
        if actor:
            params["actor"] = actor
        return builtins.list(self._call("GET", "/api/v1/audit", params=params)["entries"])

    def camera_counts(self, *, job: int | None = None, camera: str | None = None, since: float | None = None,
                      until: float | None = None, limit: int = 1000) -> dict[str, Any]:
        params = {k: v for k, v in dict(job=job, camera=camera, since=since, until=until, limit=limit).items()
                  if v is not None}
        result: dict[str, Any] = self._call("GET", "/api/v1/counts", params=params)
        return result

    def autoscale(self, decisions: int = 50) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/api/v1/autoscale", params={"decisions": decisions})
        return result

    def set_autoscale(self, enabled: bool, *, minimum: int | None = None, maximum: int | None = None,
                      profile: str | None = None) -> dict[str, Any]:
        body = {k: v for k, v in dict(enabled=enabled, min=minimum, max=maximum, profile=profile).items()
                if v is not None}
        result: dict[str, Any] = self._call("PUT", "/api/v1/autoscale", json=body)["override"]
        return result

    def models(self) -> dict[str, Any]:
        """The LLM gateway's models and backends (GET /api/v1/models)."""
        result: dict[str, Any] = self._call("GET", "/api/v1/models")
        return result

    # -- the model fleet (an operator's token) ----------------------------------------------------

    def pull_model(self, model: str, *, backends: Sequence[str] | None = None,
                   replicas: int | None = None) -> Iterator[dict[str, Any]]:
        """Pull onto the gateway's backends (the chosen ones, `replicas` by free memory, or all);
        yields the progress lines as they come, the last one success or the error."""
        body: dict[str, Any] = {"model": model}
        if backends:
            body["backends"] = list(backends)
        if replicas is not None:
            body["replicas"] = replicas
        try:
            with self._http.stream("POST", "/api/pull", json=body, timeout=httpx.Timeout(60.0, read=3600.0)) as r:
                if r.status_code >= 400:
                    r.read()
                    _raise_for(r)
                for line in r.iter_lines():
                    if line.strip():
                        yield json.loads(line)
        except httpx.TransportError as exc:
            raise Unreachable(f"cannot reach the clusterai API at {self.url}: {exc}") from None

    def delete_model(self, model: str, *, backends: Sequence[str] | None = None) -> dict[str, Any]:
        return self._fleet("DELETE", "/api/delete", {"model": model, "backends": list(backends) if backends else None})

    def loaded_models(self) -> builtins.list[dict[str, Any]]:
        """Ollama's /api/ps across the backends: each model loaded somewhere, where, until when."""
        return list(self._call("GET", "/api/ps")["models"])

    def load_model(self, model: str, *, backends: Sequence[str] | None = None, replicas: int | None = None,
                   keep_alive: str | float | None = None) -> dict[str, Any]:
        return self._fleet("POST", "/api/v1/models/load", {"model": model, "replicas": replicas,
                                                           "keep_alive": keep_alive,
                                                           "backends": list(backends) if backends else None})

    def unload_model(self, model: str, *, backends: Sequence[str] | None = None) -> dict[str, Any]:
        return self._fleet("POST", "/api/v1/models/unload",
                           {"model": model, "backends": list(backends) if backends else None})

    def _fleet(self, method: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """A fleet call's answer: which backends did it and which failed (an answer of 502 says some
        failed; it is returned, not raised, so that the caller sees both)."""
        try:
            response = self._http.request(method, path, json={k: v for k, v in body.items() if v is not None},
                                          timeout=3600.0)
        except httpx.TransportError as exc:
            raise Unreachable(f"cannot reach the clusterai API at {self.url}: {exc}") from None
        if response.status_code == 502 and "failed" in response.json():
            return dict(response.json())
        _raise_for(response)
        return dict(response.json())

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RemoteClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _options(options: dict[str, Any]) -> dict[str, Any]:
    """Client-style options as the API's JSON fields (requires= is the CLI's name for resources)."""
    out = {k: v for k, v in options.items() if v is not None and v != {}}
    if "requires" in out:
        out["resources"] = {**out.pop("requires"), **out.get("resources", {})}
    if "priority" in out and not isinstance(out["priority"], str):
        out["priority"] = getattr(out["priority"], "name", str(out["priority"])).lower()
    return out


def read_token_file(path: str | Path) -> str | None:
    file = Path(path)
    try:
        return file.read_text(encoding="utf-8").strip() or None
    except (FileNotFoundError, PermissionError):
        return None


class RemotePipelines:
    """`client.pipelines` over HTTP: the methods of service/pipelines.Pipelines."""

    def __init__(self, call: Any):
        self._call = call

    def list(self) -> builtins.list[dict[str, Any]]:
        return list(self._call("GET", "/api/v1/pipelines")["pipelines"])

    def run(self, pipeline: Any, run_input: dict[str, Any], *, fresh: bool = False) -> dict[str, Any]:
        body = {"input": run_input, "fresh": fresh}
        if isinstance(pipeline, str):
            return dict(self._call("POST", f"/api/v1/pipelines/{pipeline}/runs", json=body))
        return dict(self._call("POST", "/api/v1/pipelines/runs", json={**body, "pipeline": pipeline.to_dict()}))

    def status(self, run_id: int) -> dict[str, Any]:
        return dict(self._call("GET", f"/api/v1/pipelines/runs/{int(run_id)}"))

    def runs(self, *, name: str | None = None, state: str | None = None, limit: int = 50
             ) -> builtins.list[dict[str, Any]]:
        params = {k: v for k, v in dict(name=name, state=state, limit=limit).items() if v is not None}
        return list(self._call("GET", "/api/v1/pipelines/runs", params=params)["runs"])

    def outputs(self, run_id: int, stage: str | None = None) -> builtins.list[dict[str, Any]]:
        params = {"stage": stage} if stage else {}
        return list(self._call("GET", f"/api/v1/pipelines/runs/{int(run_id)}/outputs", params=params)["outputs"])

    def wait(self, run_id: int, timeout: float | None = None, poll: float = 0.5) -> dict[str, Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = self.status(run_id)
            if status["state"] != "running":
                return status
            if deadline is not None and time.monotonic() >= deadline:
                raise ResultTimeout(f"pipeline run {run_id} still running after {timeout} s")
            time.sleep(poll)

    def cancel(self, run_id: int) -> dict[str, Any]:
        return dict(self._call("DELETE", f"/api/v1/pipelines/runs/{int(run_id)}"))

    def retry(self, run_id: int) -> dict[str, Any]:
        return dict(self._call("POST", f"/api/v1/pipelines/runs/{int(run_id)}/retry"))


class RemoteSweeps:
    """`client.sweeps` over HTTP: the methods of service/sweeps.SweepService."""

    def __init__(self, call: Any):
        self._call = call

    def start(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        return dict(self._call("POST", "/api/v1/sweeps", json=dict(raw)))

    def list(self, *, state: str | None = None, limit: int = 50) -> builtins.list[dict[str, Any]]:
        params = {k: v for k, v in dict(state=state, limit=limit).items() if v is not None}
        return list(self._call("GET", "/api/v1/sweeps", params=params)["sweeps"])

    def status(self, sweep_id: int, *, curves: bool = True) -> dict[str, Any]:
        return dict(self._call("GET", f"/api/v1/sweeps/{int(sweep_id)}", params={"curves": curves}))

    def best(self, sweep_id: int) -> dict[str, Any] | None:
        best = self._call("GET", f"/api/v1/sweeps/{int(sweep_id)}/best")["best"]
        return dict(best) if best is not None else None

    def trial_metrics(self, sweep_id: int, number: int) -> builtins.list[dict[str, Any]]:
        return list(self._call("GET", f"/api/v1/sweeps/{int(sweep_id)}/trials/{int(number)}/metrics")["metrics"])

    def wait(self, sweep_id: int, timeout: float | None = None, poll: float = 1.0) -> dict[str, Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = self.status(sweep_id, curves=False)
            if status["state"] != "running":
                return self.status(sweep_id)
            if deadline is not None and time.monotonic() >= deadline:
                raise ResultTimeout(f"sweep {sweep_id} still running after {timeout} s")
            time.sleep(poll)

    def cancel(self, sweep_id: int) -> dict[str, Any]:
        return dict(self._call("POST", f"/api/v1/sweeps/{int(sweep_id)}/cancel"))

    def resume(self, sweep_id: int) -> dict[str, Any]:
        return dict(self._call("POST", f"/api/v1/sweeps/{int(sweep_id)}/resume"))


class RemoteRegistry:
    """`client.registry` over HTTP: the methods of service/registry.RegistryService."""

    def __init__(self, call: Any, raw: Any):
        self._call, self._raw = call, raw

    def models(self) -> builtins.list[dict[str, Any]]:
        return list(self._call("GET", "/api/v1/registry")["models"])

    def versions(self, name: str, *, limit: int = 200) -> builtins.list[dict[str, Any]]:
        path = f"/api/v1/registry/{_segment(name)}/versions"
        return list(self._call("GET", path, params={"limit": limit})["versions"])

    def show(self, name: str, ref: Any = None) -> dict[str, Any]:
        return dict(self._call("GET", f"/api/v1/registry/{_segment(name)}/versions/{_segment(ref or 'latest')}"))

    def set_alias(self, name: str, alias: str, version: Any) -> dict[str, Any]:
        path = f"/api/v1/registry/{_segment(name)}/aliases/{_segment(alias)}"
        if version is None:
            return dict(self._call("DELETE", path))
        return dict(self._call("PUT", path, json={"version": version}))

    def download(self, name: str, ref: Any = None) -> tuple[dict[str, Any], bytes]:
        """A version and its bytes; the bytes are checked against the version's SHA-256 here too."""
        version = self.show(name, ref)
        response = self._raw(f"/api/v1/registry/{_segment(name)}/versions/{version['version']}/download")
        data = response.content
        if hashlib.sha256(data).hexdigest() != version["artifact"]["sha256"]:
            raise ArtifactCorrupt(f"{name} version {version['version']}: the downloaded bytes do not match its "
                                  "SHA-256")
        return version, data


def _segment(value: Any) -> str:
    """A value as one path segment: registry names and aliases never hold '/', and a typed one is refused."""
    text = str(value)
    if not text or "/" in text or text in (".", ".."):
        raise BadInput(f"not a name: {text!r}")
    return text
