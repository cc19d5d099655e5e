"""CPU-bound tasks for the demo and the benchmarks: real work, deterministic results."""

from __future__ import annotations

import hashlib
import math

import numpy as np
from pydantic import Field

from clusterai.core.tasks import task
from clusterai.worker.execute import current_job

_SOBEL_X = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float32)


def _convolve3(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    padded = np.pad(image, 1, mode="edge")
    out = np.zeros_like(image)
    h, w = image.shape
    for dy in range(3):
        for dx in range(3):
            out += kernel[dy, dx] * padded[dy : dy + h, dx : dx + w]
    return out


def _box_blur(image: np.ndarray, passes: int) -> np.ndarray:
    kernel = np.full((3, 3), 1.0 / 9.0, dtype=np.float32)
    for _ in range(passes):
        image = _convolve3(image, kernel)
    return image


@task("image.filter", retries=2)
def image_filter(
    seed: int = Field(ge=0),
    size: int = Field(256, ge=16, le=4096),
    blur_passes: int = Field(3, ge=0, le=50),
) -> dict:
    """Generate a noisy image with shapes, blur it, find its edges; return edge statistics."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    image = rng.normal(0.0, 0.15, (size, size)).astype(np.float32)
    for _ in range(4):
        cx, cy, r = rng.uniform(0, size, 2).tolist() + [float(rng.uniform(size / 16, size / 4))]
        image += ((xx - cx) ** 2 + (yy - cy) ** 2 < r * r).astype(np.float32)
    smooth = _box_blur(image, blur_passes)
    gx = _convolve3(smooth, _SOBEL_X)
    gy = _convolve3(smooth, _SOBEL_X.T)
    magnitude = np.hypot(gx, gy)
    edges = magnitude > magnitude.mean() + 2 * magnitude.std()
    return {
        "seed": seed,
        "size": size,
        "edge_pixels": int(edges.sum()),
        "edge_fraction": round(float(edges.mean()), 6),
        "mean_intensity": round(float(smooth.mean()), 6),
    }


@task("primes.count", retries=2)
def primes_count(limit: int = Field(ge=2, le=50_000_000)) -> dict:
    """Count the primes up to `limit` with a sieve of Eratosthenes."""
    sieve = np.ones(limit + 1, dtype=bool)
    sieve[:2] = False
    for p in range(2, math.isqrt(limit) + 1):
        if sieve[p]:
            sieve[p * p :: p] = False
    return {"limit": limit, "primes": int(sieve.sum())}


@task("hash.chain", retries=2)
def hash_chain(
    data: str = Field(max_length=1_000_000), rounds: int = Field(1000, ge=1, le=10_000_000)
) -> dict:
    """Apply SHA-256 `rounds` times (a proof-of-work style CPU job); return the final digest."""
    digest = data.encode()
    for _ in range(rounds):
        digest = hashlib.sha256(digest).digest()
    return {"rounds": rounds, "sha256": digest.hex()}


@task("demo.flaky", retries=3, backoff=0.2, max_backoff=1.0)
def flaky(fail_attempts: int = Field(1, ge=0, le=10)) -> dict:
    """Fails its first `fail_attempts` attempts on purpose, to show retries at work."""
    job = current_job()
    attempt = job.attempt if job else 1
    if attempt <= fail_attempts:
        raise RuntimeError(f"demo.flaky fails attempt {attempt} of {fail_attempts} on purpose")
    return {"succeeded_on_attempt": attempt}


@task("bench.noop", retries=0)
def noop() -> None:
    """Does nothing: measures the platform's own overhead."""
    return None
