"""Time on air against the worked numbers of AN1200.13 (domain brief §5)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgegw.radio.airtime import time_on_air


@pytest.mark.parametrize(("sf", "ms"), [(7, 41.2), (8, 72.2), (9, 144.4), (10, 288.8), (11, 577.5), (12, 991.2)])
def test_ten_bytes_at_125_khz(sf, ms):
    assert time_on_air(10, sf, 125) * 1000 == pytest.approx(ms, abs=0.1)


@given(st.integers(0, 255), st.integers(7, 12), st.sampled_from([125, 250, 500]))
def test_longer_payloads_never_take_less_time(n, sf, bw):
    assert time_on_air(n + 1, sf, bw) >= time_on_air(n, sf, bw) > 0
