"""Where a served model runs: the GPU when torch sees one, else the CPU; a device asked for by name
must exist, and a wrong one is refused with a message that says why."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from clusterai.errors import BadInput  # noqa: E402
from clusterai.llm.models import pick_device  # noqa: E402

NO_CUDA = not torch.cuda.is_available()


def test_auto_takes_the_gpu_when_there_is_one() -> None:
    expected = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert pick_device("auto") == expected
    assert pick_device(" CPU ") == "cpu"


@pytest.mark.parametrize("wanted", ["gpu", "cuda:x", "tpu", ""])
def test_an_unknown_device_is_refused(wanted: str) -> None:
    with pytest.raises(BadInput, match="expected auto, cpu, cuda, cuda:N or mps"):
        pick_device(wanted)


@pytest.mark.skipif(not NO_CUDA, reason="this machine has a CUDA GPU")
@pytest.mark.parametrize("wanted", ["cuda", "cuda:1"])
def test_cuda_without_a_gpu_is_refused(wanted: str) -> None:
    with pytest.raises(BadInput, match="torch sees no CUDA GPU here"):
        pick_device(wanted)


@pytest.mark.skipif(NO_CUDA, reason="no CUDA GPU here")
def test_a_gpu_index_past_the_last_is_refused() -> None:
    with pytest.raises(BadInput, match="CUDA GPU"):
        pick_device(f"cuda:{torch.cuda.device_count()}")
