"""A running job's training context, used from inside a task (`from clusterai import trial`):

- `report(step, **metrics)`: the metrics at a step, sent to the head over Dask's event stream (the
  worker needs no store access). The head stores them as the trial's time series, and a sweep's
  pruner may answer by stopping the trial: the next `report` then raises StopRequested, which
  ends the attempt as a stopped (pruned) trial rather than as a failure.
- `checkpoint(state)` / `restore()`: the state is written to the artifact store, then a manifest
  naming it with its SHA-256; only then is the old state removed. A reader (the next attempt, on
  another worker after this one died) finds the old state or the new, whole and verified.

Checkpoints live under `jobs/<id>`: a trial keeps one job for its life (a retry, a resume after the
sweep was cancelled, a move to another worker are attempts of that job), and any other job that
checkpoints resumes the same way when it is retried. Outside a worker every call is a
no-op (`restore()` returns None): an objective can be run and debugged as a plain function.
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from typing import Any

from clusterai.core import state_codec
from clusterai.core.artifacts import ArtifactCorrupt, ArtifactStore
from clusterai.errors import BadInput, NonRetryableError
from clusterai.worker.execute import JobContext, StopRequested, current_job, emit, stop_requested

TOPIC = "clusterai-trials"
MANIFEST = "manifest.json"
log = logging.getLogger("clusterai.trial")


def namespace(job: JobContext) -> str:
    """Where a job's checkpoints live in the artifact store."""
    return f"jobs/{job.job_id}"


def report(step: int, **metrics: float) -> None:
    """Record `metrics` (finite numbers) at `step` (0, 1, 2, ...: an epoch, a batch count). Raises
    StopRequested when the head has stopped this trial; let it propagate."""
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise BadInput(f"trial.report: step must be an integer >= 0, got {step!r}")
    clean: dict[str, float] = {}
    for name, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not _finite(value):
            raise BadInput(f"trial.report: metric {name!r} must be a finite number, got {value!r}")
        clean[name] = float(value)
    job = current_job()
    if job is None:
        return
    emit(TOPIC, {"job_id": job.job_id, "attempt": job.attempt, "step": step, "metrics": clean, "at": time.time()})
    reason = stop_requested(job.job_id, job.attempt)
    if reason is not None:
        raise StopRequested(reason, step, clean)


def _finite(value: int | float) -> bool:
    try:
        return math.isfinite(float(value))
    except OverflowError:  # an int too big for a float
        return False


def should_stop() -> bool:
    """Whether the head asked this attempt to stop (for tasks that check between reports)."""
    job = current_job()
    return job is not None and stop_requested(job.job_id, job.attempt) is not None


def checkpoint(state: Any, *, step: int | None = None) -> dict[str, Any] | None:
    """Keep `state` (JSON data with numpy arrays or tensors, or bytes) as this job's checkpoint;
    returns the manifest. Refused (non-retryable) when a later attempt of the job already wrote one:
    this attempt lost its lease and must not roll the job's progress back."""
    job = current_job()
    if job is None:
        return None
    store = ArtifactStore()
    folder = namespace(job)
    current = _manifest(store, folder)
    if current is not None and int(current.get("attempt", 0)) > job.attempt:
        raise NonRetryableError(f"attempt {job.attempt} of job {job.job_id} was superseded by attempt "
                                f"{current['attempt']}; its checkpoint is not written")
    ref = store.put_bytes(folder, f"state-{uuid.uuid4().hex}.bin", state_codec.encode(state))
    manifest = {**ref, "step": step, "attempt": job.attempt, "at": time.time()}
    store.put_bytes(folder, MANIFEST, json.dumps(manifest).encode())
    if current is not None and current.get("artifact") != ref["artifact"]:
        try:
            store.delete(current)
        except (OSError, BadInput):  # a leftover costs disk, not correctness
            log.info("could not remove the previous checkpoint %s", current.get("artifact"))
    return manifest


def restore() -> Any | None:
    """This job's last checkpoint's state, or None (no checkpoint yet, or outside a worker). A
    checkpoint whose bytes no longer match its manifest is reported and not used."""
    job = current_job()
    if job is None:
        return None
    store = ArtifactStore()
    manifest = _manifest(store, namespace(job))
    if manifest is None:
        return None
    try:
        store.verify(manifest)
        return state_codec.decode(store.get_bytes(manifest))
    except (ArtifactCorrupt, BadInput, OSError) as exc:
        log.warning("job %d: checkpoint %s is not usable (%s); starting over", job.job_id,
                    manifest.get("artifact"), exc)
        return None


def last_checkpoint() -> dict[str, Any] | None:
    """The manifest of this job's last checkpoint (step, attempt, artifact, sha256), or None."""
    job = current_job()
    return None if job is None else _manifest(ArtifactStore(), namespace(job))


def _manifest(store: ArtifactStore, folder: str) -> dict[str, Any] | None:
    url = store.url(folder, MANIFEST)
    if not store.exists(url):
        return None
    try:
        manifest = json.loads(store.get_bytes(url))
    except (ValueError, OSError) as exc:
        log.warning("checkpoint manifest %s is not readable (%s)", url, exc)
        return None
    return manifest if isinstance(manifest, dict) and "artifact" in manifest else None


__all__ = ["StopRequested", "checkpoint", "last_checkpoint", "namespace", "report", "restore", "should_stop"]
