"""Join codes: what `clusterai join-code` prints and `clusterai join` reads back, and damaged ones."""

from __future__ import annotations

import pytest

from clusterai.errors import EXIT_BAD_INPUT
from clusterai.worker.join import JoinFailed, make_code, read_code


def test_a_code_carries_url_pin_and_token():
    code = make_code("https://head.lan:8000/", "AB" * 32, "cai_0123456789ab_secret")
    assert code.startswith("caijoin1.") and "\n" not in code
    assert read_code(f"  {code}\n") == ("https://head.lan:8000", ("ab" * 32), "cai_0123456789ab_secret")


@pytest.mark.parametrize("code", ["cai_0123_secret", "caijoin1.!!!", "caijoin1.e30", ""])
def test_a_damaged_code_is_refused_as_bad_input(code):
    with pytest.raises(JoinFailed) as refused:
        read_code(code)
    assert refused.value.exit_code == EXIT_BAD_INPUT
