/*
 * AES-128 (FIPS-197, forward cipher only) and AES-CMAC (RFC 4493), and the edgegw envelope built
 * on them. See edgegw_frame.h for the frame and for how the firmware must keep its counter.
 *
 * Written for small microcontrollers: no malloc (under 400 bytes of stack), no libc
 * beyond memcpy and memset, byte-wise so it needs no particular endianness or alignment, and
 * small rather than fast, since a sensor seals one short frame every few minutes. Only the
 * forward cipher is here because CMAC never decrypts, which saves the inverse tables' flash.
 */
#include "edgegw_frame.h"

#include <string.h>

#define AES_BLOCK 16u
#define AES_ROUNDS 10u
#define AES_ROUND_KEYS_BYTES (AES_BLOCK * (AES_ROUNDS + 1u))

/*
 * The S-box of FIPS-197 section 5.1.1: the multiplicative inverse in GF(2^8) followed by the affine
 * transformation. A constant table, so it stays in flash rather than taking 256 bytes of RAM.
 * Lookups indexed by secret bytes take constant time on cores without a data cache (AVR, most
 * Cortex-M0/M3/M4); where a cache makes them leak timing, the attacker would need code running on
 * the sensor itself, and could read the key from flash anyway.
 */
static const uint8_t sbox[256] = {
    0x63, 0x7c, 0x77, 0x7b, 0xf2, 0x6b, 0x6f, 0xc5, 0x30, 0x01, 0x67, 0x2b, 0xfe, 0xd7, 0xab, 0x76,
    0xca, 0x82, 0xc9, 0x7d, 0xfa, 0x59, 0x47, 0xf0, 0xad, 0xd4, 0xa2, 0xaf, 0x9c, 0xa4, 0x72, 0xc0,
    0xb7, 0xfd, 0x93, 0x26, 0x36, 0x3f, 0xf7, 0xcc, 0x34, 0xa5, 0xe5, 0xf1, 0x71, 0xd8, 0x31, 0x15,
    0x04, 0xc7, 0x23, 0xc3, 0x18, 0x96, 0x05, 0x9a, 0x07, 0x12, 0x80, 0xe2, 0xeb, 0x27, 0xb2, 0x75,
    0x09, 0x83, 0x2c, 0x1a, 0x1b, 0x6e, 0x5a, 0xa0, 0x52, 0x3b, 0xd6, 0xb3, 0x29, 0xe3, 0x2f, 0x84,
    0x53, 0xd1, 0x00, 0xed, 0x20, 0xfc, 0xb1, 0x5b, 0x6a, 0xcb, 0xbe, 0x39, 0x4a, 0x4c, 0x58, 0xcf,
    0xd0, 0xef, 0xaa, 0xfb, 0x43, 0x4d, 0x33, 0x85, 0x45, 0xf9, 0x02, 0x7f, 0x50, 0x3c, 0x9f, 0xa8,
    0x51, 0xa3, 0x40, 0x8f, 0x92, 0x9d, 0x38, 0xf5, 0xbc, 0xb6, 0xda, 0x21, 0x10, 0xff, 0xf3, 0xd2,
    0xcd, 0x0c, 0x13, 0xec, 0x5f, 0x97, 0x44, 0x17, 0xc4, 0xa7, 0x7e, 0x3d, 0x64, 0x5d, 0x19, 0x73,
    0x60, 0x81, 0x4f, 0xdc, 0x22, 0x2a, 0x90, 0x88, 0x46, 0xee, 0xb8, 0x14, 0xde, 0x5e, 0x0b, 0xdb,
    0xe0, 0x32, 0x3a, 0x0a, 0x49, 0x06, 0x24, 0x5c, 0xc2, 0xd3, 0xac, 0x62, 0x91, 0x95, 0xe4, 0x79,
    0xe7, 0xc8, 0x37, 0x6d, 0x8d, 0xd5, 0x4e, 0xa9, 0x6c, 0x56, 0xf4, 0xea, 0x65, 0x7a, 0xae, 0x08,
    0xba, 0x78, 0x25, 0x2e, 0x1c, 0xa6, 0xb4, 0xc6, 0xe8, 0xdd, 0x74, 0x1f, 0x4b, 0xbd, 0x8b, 0x8a,
    0x70, 0x3e, 0xb5, 0x66, 0x48, 0x03, 0xf6, 0x0e, 0x61, 0x35, 0x57, 0xb9, 0x86, 0xc1, 0x1d, 0x9e,
    0xe1, 0xf8, 0x98, 0x11, 0x69, 0xd9, 0x8e, 0x94, 0x9b, 0x1e, 0x87, 0xe9, 0xce, 0x55, 0x28, 0xdf,
    0x8c, 0xa1, 0x89, 0x0d, 0xbf, 0xe6, 0x42, 0x68, 0x41, 0x99, 0x2d, 0x0f, 0xb0, 0x54, 0xbb, 0x16,
};

/*
 * Multiplication by x in GF(2^8) modulo x^8 + x^4 + x^3 + x + 1 (FIPS-197 section 4.2.1). The
 * reduction is a mask rather than a branch so that its timing does not depend on the byte.
 */
static uint8_t xtime(uint8_t b)
{
    return (uint8_t)((uint8_t)(b << 1) ^ (0x1bu & (0u - (unsigned)(b >> 7))));
}

/*
 * Overwrite key material before the stack frame is given back. Through a volatile pointer because
 * a plain memset of a buffer that is never read again may be removed by the optimiser.
 */
static void wipe(void *p, size_t n)
{
    volatile uint8_t *v = (volatile uint8_t *)p;
    while (n--) {
        *v++ = 0;
    }
}

/* KeyExpansion (FIPS-197 section 5.2) for Nk = 4: 11 round keys of 16 bytes, w[0] .. w[43]. */
static void expand_key(const uint8_t key[16], uint8_t rk[AES_ROUND_KEYS_BYTES])
{
    uint8_t rcon = 0x01;
    size_t i;

    memcpy(rk, key, AES_BLOCK);
    for (i = AES_BLOCK; i < AES_ROUND_KEYS_BYTES; i += 4) {
        uint8_t t0 = rk[i - 4], t1 = rk[i - 3], t2 = rk[i - 2], t3 = rk[i - 1];
        if (i % AES_BLOCK == 0) {
            /* SubWord(RotWord(temp)) xor Rcon[i/Nk]; Rcon's first byte is x^(i/Nk - 1). */
            uint8_t r = t0;
            t0 = (uint8_t)(sbox[t1] ^ rcon);
            t1 = sbox[t2];
            t2 = sbox[t3];
            t3 = sbox[r];
            rcon = xtime(rcon);
        }
        rk[i] = (uint8_t)(rk[i - AES_BLOCK] ^ t0);
        rk[i + 1] = (uint8_t)(rk[i + 1 - AES_BLOCK] ^ t1);
        rk[i + 2] = (uint8_t)(rk[i + 2 - AES_BLOCK] ^ t2);
        rk[i + 3] = (uint8_t)(rk[i + 3 - AES_BLOCK] ^ t3);
    }
}

static void add_round_key(uint8_t s[16], const uint8_t *k)
{
    unsigned i;
    for (i = 0; i < AES_BLOCK; i++) {
        s[i] ^= k[i];
    }
}

/*
 * SubBytes then ShiftRows (FIPS-197 sections 5.1.1 and 5.1.2), fused because both are byte
 * permutations of the state. The state is kept as FIPS-197 lays out the input, column by column:
 * s[r + 4c] is row r, column c, and row r moves r columns to the left.
 */
static void sub_shift(uint8_t s[16])
{
    uint8_t t[16];
    unsigned r, c;
    for (c = 0; c < 4; c++) {
        for (r = 0; r < 4; r++) {
            t[r + 4 * c] = sbox[s[r + 4 * ((c + r) % 4)]];
        }
    }
    memcpy(s, t, AES_BLOCK);
}

/* MixColumns (FIPS-197 section 5.1.3): each column times {03}x^3 + {01}x^2 + {01}x + {02}. */
static void mix_columns(uint8_t s[16])
{
    unsigned c;
    for (c = 0; c < 4; c++) {
        uint8_t *col = s + 4 * c;
        uint8_t a0 = col[0], a1 = col[1], a2 = col[2], a3 = col[3];
        uint8_t all = (uint8_t)(a0 ^ a1 ^ a2 ^ a3);
        /* 2a0 ^ 3a1 ^ a2 ^ a3 == a0 ^ all ^ 2(a0 ^ a1), and likewise for each row. */
        col[0] = (uint8_t)(a0 ^ all ^ xtime((uint8_t)(a0 ^ a1)));
        col[1] = (uint8_t)(a1 ^ all ^ xtime((uint8_t)(a1 ^ a2)));
        col[2] = (uint8_t)(a2 ^ all ^ xtime((uint8_t)(a2 ^ a3)));
        col[3] = (uint8_t)(a3 ^ all ^ xtime((uint8_t)(a3 ^ a0)));
    }
}

/* Cipher (FIPS-197 section 5.1). `in` and `out` may be the same block. */
static void encrypt_block(const uint8_t rk[AES_ROUND_KEYS_BYTES], const uint8_t in[16], uint8_t out[16])
{
    uint8_t s[16];
    unsigned round;

    memcpy(s, in, AES_BLOCK);
    add_round_key(s, rk);
    for (round = 1; round < AES_ROUNDS; round++) {
        sub_shift(s);
        mix_columns(s);
        add_round_key(s, rk + AES_BLOCK * round);
    }
    sub_shift(s); /* the last round has no MixColumns */
    add_round_key(s, rk + AES_BLOCK * AES_ROUNDS);
    memcpy(out, s, AES_BLOCK);
    wipe(s, sizeof s);
}

void edgegw_aes128_encrypt(const uint8_t key[16], const uint8_t in[16], uint8_t out[16])
{
    uint8_t rk[AES_ROUND_KEYS_BYTES];
    expand_key(key, rk);
    encrypt_block(rk, in, out);
    wipe(rk, sizeof rk);
}

/*
 * The doubling of RFC 4493 section 2.3: shift the 128-bit string left by one bit, and if a 1 fell
 * off the top, xor R_128 = 0x87 into the last byte (the reduction modulo x^128 + x^7 + x^2 + x + 1).
 */
static void dbl(const uint8_t in[16], uint8_t out[16])
{
    uint8_t carry = (uint8_t)(in[0] >> 7);
    unsigned i;
    for (i = 0; i < AES_BLOCK - 1; i++) {
        out[i] = (uint8_t)((uint8_t)(in[i] << 1) | (in[i + 1] >> 7));
    }
    out[AES_BLOCK - 1] = (uint8_t)((uint8_t)(in[AES_BLOCK - 1] << 1) ^ (0x87u & (0u - (unsigned)carry)));
}

/* AES-CMAC, RFC 4493 section 2.4. */
void edgegw_cmac(const uint8_t key[16], const uint8_t *msg, size_t len, uint8_t mac[16])
{
    uint8_t rk[AES_ROUND_KEYS_BYTES];
    uint8_t k1[16], k2[16];
    uint8_t x[16];
    size_t n, i, rest;
    unsigned j;

    expand_key(key, rk);

    /* Subkeys (section 2.3): L = AES-128(K, 0^128), K1 = dbl(L), K2 = dbl(K1). */
    memset(x, 0, AES_BLOCK);
    encrypt_block(rk, x, x);
    dbl(x, k1);
    dbl(k1, k2);

    /* n blocks, the last one possibly partial; an empty message is one empty, padded block. */
    n = len / AES_BLOCK + (len % AES_BLOCK != 0);
    if (n == 0) {
        n = 1;
    }

    /* CBC over every block but the last, from X = 0. */
    memset(x, 0, AES_BLOCK);
    for (i = 0; i + 1 < n; i++) {
        for (j = 0; j < AES_BLOCK; j++) {
            x[j] ^= msg[AES_BLOCK * i + j];
        }
        encrypt_block(rk, x, x);
    }

    /*
     * The last block: a complete one is xored with K1; a partial (or empty) one is padded with a
     * single 1 bit and then 0 bits (10^i) and xored with K2. The two subkeys keep a message that
     * happens to end like padding from sharing a MAC with the shorter message it would pad out to.
     */
    rest = len - AES_BLOCK * (n - 1);
    if (rest == AES_BLOCK) {
        for (j = 0; j < AES_BLOCK; j++) {
            x[j] ^= (uint8_t)(msg[AES_BLOCK * (n - 1) + j] ^ k1[j]);
        }
    } else {
        for (j = 0; j < AES_BLOCK; j++) {
            uint8_t m = j < rest ? msg[AES_BLOCK * (n - 1) + j] : (j == rest ? 0x80u : 0x00u);
            x[j] ^= (uint8_t)(m ^ k2[j]);
        }
    }
    encrypt_block(rk, x, mac);

    wipe(rk, sizeof rk);
    wipe(k1, sizeof k1);
    wipe(k2, sizeof k2);
    wipe(x, sizeof x);
}

static void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

size_t edgegw_seal(const uint8_t key[16], uint32_t device_id, uint32_t counter,
                   const uint8_t *payload, size_t len, uint8_t *out, size_t out_size)
{
    uint8_t mac[16];
    size_t body = EDGEGW_HEADER_BYTES + len;

    /* The first test keeps len + EDGEGW_OVERHEAD from wrapping around to a small number. */
    if (len > (size_t)-1 - EDGEGW_OVERHEAD || out == NULL || out_size < len + EDGEGW_OVERHEAD) {
        return 0;
    }
    if (len > 0 && payload == NULL) {
        return 0;
    }

    /* A payload built in place is already where it belongs; memcpy onto itself is undefined. */
    if (len > 0 && payload != out + EDGEGW_HEADER_BYTES) {
        memcpy(out + EDGEGW_HEADER_BYTES, payload, len);
    }
    out[0] = EDGEGW_VERSION;
    /* Big-endian whatever the MCU's byte order, because the gateway reads them so. */
    put_be32(out + 1, device_id);
    put_be32(out + 5, counter);

    /* The MIC covers the device id and the counter too: changing either, to pass a frame off as
     * another sensor's or to replay it under a fresh counter, fails the check like any flipped bit. */
    edgegw_cmac(key, out, body, mac);
    memcpy(out + body, mac, EDGEGW_MIC_BYTES);
    wipe(mac, sizeof mac);
    return body + EDGEGW_MIC_BYTES;
}
