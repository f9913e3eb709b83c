"""LoRa time on air (Semtech AN1200.13), for the ARIB STD-T108 limits a transmitting node must keep.

Under ARIB STD-T108 a 920 MHz transmission after 128 µs of carrier sense may last 0.4 s at most;
longer ones (up to 4 s) need 5 ms of carrier sense. The gateway only listens; the check is for
settings the sensors must share with it (e.g. an ES920LR end node).
"""

from __future__ import annotations

import math

SHORT_SENSE_MAX_S = 0.4  # longest burst after 128 µs carrier sense (ARIB STD-T108)
LONG_SENSE_MAX_S = 4.0  # longest burst after 5 ms carrier sense: no transmission may be longer


def time_on_air(payload: int, sf: int, bw_khz: float, cr: int = 1, preamble: int = 8, explicit_header: bool = True,
                crc: bool = True) -> float:
    """Seconds on air of a LoRa packet of ``payload`` bytes; ``cr`` 1-4 for 4/5-4/8."""
    t_sym = 2**sf / (bw_khz * 1000)
    de = 1 if sf >= 11 and bw_khz <= 125 else 0  # low data rate optimisation
    bits = 8 * payload - 4 * sf + 28 + 16 * crc - 20 * (not explicit_header)
    n_payload = 8 + max(math.ceil(bits / (4 * (sf - 2 * de))) * (cr + 4), 0)
    return (preamble + 4.25) * t_sym + n_payload * t_sym
