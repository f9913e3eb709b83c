/*
 * A host-side command line for edgegw_frame: seals frames and computes CMACs so the gateway's
 * tests (tests/test_firmware.py) can compare the C with the Python reference, and so an installer
 * can make a test frame by hand. Not firmware itself: it uses stdio freely.
 *
 *   edgegw_example seal KEYHEX DEVICE_ID COUNTER PAYLOADHEX   prints the frame in hex
 *   edgegw_example cmac KEYHEX MESSAGEHEX                     prints the 16-byte AES-CMAC in hex
 *   edgegw_example aes KEYHEX BLOCKHEX                        prints one AES-128 block in hex
 *
 * DEVICE_ID and COUNTER are decimal, or hexadecimal after 0x; an empty PAYLOADHEX ('') is an
 * empty payload. Exit status 2 for a bad argument.
 */
#include <stdio.h>
#include <string.h>

#include "edgegw_frame.h"

#define MAX_BYTES 1024u

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}

/* Decode hex into out; return the byte count, or -1 if it is not whole bytes of hex or too long. */
static long parse_hex(const char *s, uint8_t *out, size_t cap)
{
    size_t n = strlen(s), i;
    if (n % 2 != 0 || n / 2 > cap) {
        return -1;
    }
    for (i = 0; i < n / 2; i++) {
        int hi = hex_digit(s[2 * i]), lo = hex_digit(s[2 * i + 1]);
        if (hi < 0 || lo < 0) {
            return -1;
        }
        out[i] = (uint8_t)(hi * 16 + lo);
    }
    return (long)(n / 2);
}

/* By hand rather than strtoul, which would take "-1" as 2^32 - 1 and "010" as octal. */
static int parse_u32(const char *s, uint32_t *out)
{
    unsigned base = 10;
    uint64_t v = 0;
    if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
        base = 16;
        s += 2;
    }
    if (*s == '\0') {
        return -1;
    }
    for (; *s; s++) {
        int d = hex_digit(*s);
        if (d < 0 || (unsigned)d >= base) {
            return -1;
        }
        v = v * base + (unsigned)d;
        if (v > 0xffffffffu) {
            return -1;
        }
    }
    *out = (uint32_t)v;
    return 0;
}

static void print_hex(const uint8_t *p, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++) {
        printf("%02x", p[i]);
    }
    printf("\n");
}

static int usage(void)
{
    fprintf(stderr,
            "usage: edgegw_example seal KEYHEX DEVICE_ID COUNTER PAYLOADHEX\n"
            "       edgegw_example cmac KEYHEX MESSAGEHEX\n"
            "       edgegw_example aes KEYHEX BLOCKHEX\n");
    return 2;
}

static int bad(const char *what)
{
    fprintf(stderr, "edgegw_example: %s\n", what);
    return 2;
}

int main(int argc, char **argv)
{
    static uint8_t data[MAX_BYTES];
    static uint8_t frame[MAX_BYTES + EDGEGW_OVERHEAD];
    uint8_t key[16], block[16], mac[16];
    long n;

    if (argc < 2) {
        return usage();
    }
    if (strcmp(argv[1], "seal") == 0 && argc == 6) {
        uint32_t device_id, counter;
        size_t len;
        if (parse_hex(argv[2], key, sizeof key) != 16) {
            return bad("the key is 32 hex digits");
        }
        if (parse_u32(argv[3], &device_id) != 0) {
            return bad("the device id is a number from 0 to 4294967295");
        }
        if (parse_u32(argv[4], &counter) != 0) {
            return bad("the counter is a number from 0 to 4294967295");
        }
        if ((n = parse_hex(argv[5], data, MAX_BYTES)) < 0) {
            return bad("the payload is whole bytes of hex, at most 1024 of them");
        }
        len = edgegw_seal(key, device_id, counter, data, (size_t)n, frame, sizeof frame);
        if (len == 0) {
            return bad("the frame does not fit");
        }
        print_hex(frame, len);
        return 0;
    }
    if (strcmp(argv[1], "cmac") == 0 && argc == 4) {
        if (parse_hex(argv[2], key, sizeof key) != 16) {
            return bad("the key is 32 hex digits");
        }
        if ((n = parse_hex(argv[3], data, MAX_BYTES)) < 0) {
            return bad("the message is whole bytes of hex, at most 1024 of them");
        }
        edgegw_cmac(key, data, (size_t)n, mac);
        print_hex(mac, sizeof mac);
        return 0;
    }
    if (strcmp(argv[1], "aes") == 0 && argc == 4) {
        if (parse_hex(argv[2], key, sizeof key) != 16) {
            return bad("the key is 32 hex digits");
        }
        if (parse_hex(argv[3], block, sizeof block) != 16) {
            return bad("the block is 32 hex digits");
        }
        edgegw_aes128_encrypt(key, block, mac);
        print_hex(mac, sizeof mac);
        return 0;
    }
    return usage();
}
