"""The C encoder for sensor firmware (firmware/) against RFC 4493, FIPS-197 and the Python reference.

A sensor whose frames differ from ``edgegw.envelope.seal`` by one bit is silently dropped by the
gateway as a forgery, so the C is compiled here with the strict flags a firmware build would use and
checked byte for byte against the published vectors and against the gateway's own encoder and check.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.algorithms import AES
from cryptography.hazmat.primitives.cmac import CMAC
from hypothesis import example, given, settings
from hypothesis import strategies as st

from edgegw.envelope import COUNTER_MAX, EnvelopeError, mic, open_envelope, seal

FIRMWARE = Path(__file__).resolve().parent.parent / "firmware"
CFLAGS = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-O2"]

# RFC 4493 section 4: the key and the four examples (empty, one block, two and a half, four).
RFC4493_KEY = bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c")
RFC4493_M = bytes.fromhex(
    "6bc1bee22e409f96e93d7e117393172a"
    "ae2d8a571e03ac9c9eb76fac45af8e51"
    "30c81c46a35ce411e5fbc1191a0a52ef"
    "f69f2445df4f9b17ad2b417be66c3710"
)
RFC4493_EXAMPLES = [
    pytest.param(RFC4493_M[:0], "bb1d6929e95937287fa37d129b756746", id="example1-len0"),
    pytest.param(RFC4493_M[:16], "070a16b46b4d4144f79bdd9dd04a287c", id="example2-len16"),
    pytest.param(RFC4493_M[:40], "dfa66747de9ae63030ca32611497c827", id="example3-len40"),
    pytest.param(RFC4493_M[:64], "51f0bebf7e3b9d92fc49741779363cfe", id="example4-len64"),
]


def _gcc() -> str:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed, so the C encoder in firmware/ cannot be built (CI installs it)")
    return gcc


def _compile(out: Path, *sources: Path, extra: tuple[str, ...] = ()) -> Path:
    build = subprocess.run(
        [_gcc(), *CFLAGS, *extra, f"-I{FIRMWARE}", "-o", str(out), *map(str, sources)],
        capture_output=True,
        text=True,
    )
    if build.returncode != 0:
        pytest.fail(f"gcc failed on {[s.name for s in sources]}:\n{build.stderr}")
    return out


@pytest.fixture(scope="module")
def cli(tmp_path_factory) -> Path:
    """firmware/example.c built with the strict flags: warnings are errors, as in a firmware build."""
    out = tmp_path_factory.mktemp("firmware") / "edgegw_example"
    return _compile(out, FIRMWARE / "edgegw_frame.c", FIRMWARE / "example.c")


def run(cli: Path, *args: str) -> bytes:
    done = subprocess.run([str(cli), *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return bytes.fromhex(done.stdout.strip())


def c_seal(cli: Path, key: bytes, device_id: int, counter: int, payload: bytes) -> bytes:
    return run(cli, "seal", key.hex(), str(device_id), str(counter), payload.hex())


@pytest.mark.parametrize(("message", "expected"), RFC4493_EXAMPLES)
def test_c_cmac_matches_rfc4493_vectors(cli, message, expected):
    assert run(cli, "cmac", RFC4493_KEY.hex(), message.hex()).hex() == expected


@pytest.mark.parametrize(("message", "expected"), RFC4493_EXAMPLES)
def test_python_mic_is_rfc4493_cmac_truncated_to_4_bytes(message, expected):
    # The full CMAC from the library mic() relies on, so the vectors check the library as well as
    # the truncation; the C and Python then agree because both agree with the RFC.
    c = CMAC(AES(RFC4493_KEY))
    c.update(message)
    full = c.finalize()
    assert full.hex() == expected
    assert mic(RFC4493_KEY, message) == full[:4]


@pytest.mark.parametrize(
    ("key", "block", "expected"),
    [
        pytest.param(
            "2b7e151628aed2a6abf7158809cf4f3c",
            "3243f6a8885a308d313198a2e0370734",
            "3925841d02dc09fbdc118597196a0b32",
            id="appendix-B",
        ),
        pytest.param(
            "000102030405060708090a0b0c0d0e0f",
            "00112233445566778899aabbccddeeff",
            "69c4e0d86a7b0430d8cdb78070b4c55a",
            id="appendix-C1",
        ),
    ],
)
def test_c_aes128_matches_fips197_vectors(cli, key, block, expected):
    # A port to a new compiler that gets the cipher wrong shows here first, not as a wrong CMAC.
    assert run(cli, "aes", key, block).hex() == expected


@settings(max_examples=50, deadline=None)  # one process per example; the check is of bytes, not time
@given(
    key=st.binary(min_size=16, max_size=16),
    device_id=st.integers(0, 2**32 - 1),
    counter=st.integers(0, COUNTER_MAX),
    payload=st.binary(max_size=200),
)
# Payloads that end the CMAC input on a block boundary (9 + 7 = 16, 9 + 23 = 32) take K1 rather than
# K2, and the largest id and counter catch a sign or width slip in the big-endian header.
@example(key=bytes(16), device_id=0, counter=0, payload=b"")
@example(key=bytes(range(16)), device_id=2**32 - 1, counter=COUNTER_MAX, payload=b"\x00" * 7)
@example(key=b"\xff" * 16, device_id=0x01020304, counter=0x80000000, payload=bytes(range(23)))
def test_c_frame_equals_python_seal_and_opens(cli, key, device_id, counter, payload):
    frame = c_seal(cli, key, device_id, counter, payload)
    assert frame == seal(key, device_id, counter, payload)
    opened = open_envelope(key, device_id, frame)
    assert (opened.counter, opened.payload) == (counter, payload)


@pytest.mark.parametrize(
    "payload",
    [b"", bytes(range(7)), bytes.fromhex("0109C405AA0E740007") * 3],
    ids=["empty", "one-whole-block", "three-blocks-partial"],
)
def test_any_bit_flip_in_a_c_frame_is_rejected(cli, payload):
    key, device_id, counter = bytes(range(100, 116)), 0x2A, 12345
    frame = c_seal(cli, key, device_id, counter, payload)
    assert open_envelope(key, device_id, frame).payload == payload  # the flips below are all that fail
    for bit in range(len(frame) * 8):
        flipped = bytearray(frame)
        flipped[bit // 8] ^= 0x80 >> (bit % 8)
        with pytest.raises(EnvelopeError):
            open_envelope(key, device_id, bytes(flipped))


BOUNDS_PROGRAM = r"""
#include <stdio.h>
#include <string.h>
#include "edgegw_frame.h"

static void show(size_t n, const uint8_t *buf, size_t size)
{
    size_t i, spill = 0;
    printf("%lu ", (unsigned long)n);
    for (i = 0; i < n; i++) printf("%02x", buf[i]);
    for (i = n; i < size; i++) spill += buf[i] != 0xa5;
    printf(" %lu\n", (unsigned long)spill);
}

int main(void)
{
    static const uint8_t key[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};
    static const uint8_t payload[5] = {0xde, 0xad, 0xbe, 0xef, 0x42};
    uint8_t buf[64];

    memset(buf, 0xa5, sizeof buf);
    show(edgegw_seal(key, 7, 1, payload, 5, buf, 17), buf, sizeof buf);

    memset(buf, 0xa5, sizeof buf);
    show(edgegw_seal(key, 7, 1, payload, 5, buf, 18), buf, sizeof buf);

    memset(buf, 0xa5, sizeof buf);
    memcpy(buf + EDGEGW_HEADER_BYTES, payload, 5);
    show(edgegw_seal(key, 7, 1, buf + EDGEGW_HEADER_BYTES, 5, buf, 18), buf, sizeof buf);

    memset(buf, 0xa5, sizeof buf);
    show(edgegw_seal(key, 7, 1, NULL, 0, buf, EDGEGW_OVERHEAD), buf, sizeof buf);
    return 0;
}
"""


def test_c_seal_never_writes_past_out_size_and_seals_in_place(tmp_path):
    source = tmp_path / "bounds.c"
    source.write_text(BOUNDS_PROGRAM)
    program = _compile(tmp_path / "bounds", FIRMWARE / "edgegw_frame.c", source)
    lines = subprocess.run([str(program)], capture_output=True, text=True, check=True).stdout.splitlines()
    key, payload = bytes(range(1, 17)), bytes.fromhex("deadbeef42")
    expected = seal(key, 7, 1, payload).hex()

    # One byte short: refused with 0, and not a byte of the buffer written.
    assert lines[0] == "0  0"
    # Exactly large enough, and with the payload built in place at out + 9: the same frame either
    # way, with nothing written after it.
    assert lines[1] == f"18 {expected} 0"
    assert lines[2] == f"18 {expected} 0"
    # A sensor with nothing to report but a heartbeat seals an empty payload.
    assert lines[3] == f"13 {seal(key, 7, 1, b'').hex()} 0"


def test_c_encoder_needs_nothing_from_libc_but_memcpy_and_memset(tmp_path):
    # The promise to firmware authors: it links on a bare microcontroller with no OS and no libc
    # but the two functions every toolchain's runtime provides.
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("nm (binutils) is not installed, so the object's undefined symbols cannot be listed")
    obj = tmp_path / "edgegw_frame.o"
    _compile(obj, FIRMWARE / "edgegw_frame.c", extra=("-c", "-ffreestanding", "-fno-stack-protector"))
    undefined = subprocess.run([nm, "-u", str(obj)], capture_output=True, text=True, check=True).stdout.split()
    symbols = {s for s in undefined if s != "U" and not s.startswith("_GLOBAL_OFFSET_TABLE_")}
    assert symbols <= {"memcpy", "memset"}
