/*
 * edgegw_frame: seal a sensor's payload in the envelope the edgegw gateway authenticates.
 *
 *     version (1) | device id (4, big-endian) | frame counter (4, big-endian) | payload | MIC (4)
 *
 * MIC = the first 4 bytes of AES-128-CMAC (RFC 4493) with the device's own 16-byte key over every
 * byte before it. The gateway's reference encoder is edgegw.envelope.seal; this is the same in C99
 * for sensor firmware: no malloc, nothing from libc but memcpy and memset, no OS, no other library,
 * so it builds with any microcontroller toolchain (and from C++, e.g. an Arduino sketch).
 *
 * The frame counter is what stops replay: anyone in radio range can record a frame and send it
 * again, and its MIC still verifies. The gateway therefore keeps the last counter it accepted from
 * each device and drops every frame whose counter is not larger. Hence, in the firmware:
 *
 *   - Keep the counter in non-volatile memory (flash, EEPROM, FRAM), not only in RAM: after a
 *     reset or a battery change a counter that restarts at 0 is below what the gateway last
 *     accepted, and the sensor goes silent until the counter climbs past it again.
 *   - Increment it and write it back BEFORE each send, never after: a power cut between the send
 *     and the write would otherwise send the next reading with a counter already used, and the
 *     gateway drops that reading as a replay.
 *   - Never reuse a counter, and never reset it in the field. A counter reset (new key, replaced
 *     board, counter at 2^32 - 1) needs a visit by the installer, who resets the device's counter
 *     at the gateway too; a sensor that could reset its counter on its own would let anyone who
 *     can power-cycle it replay old frames.
 */
#ifndef EDGEGW_FRAME_H
#define EDGEGW_FRAME_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define EDGEGW_VERSION 0x01u
#define EDGEGW_KEY_BYTES 16u
#define EDGEGW_HEADER_BYTES 9u /* version, device id, counter: where the payload starts in a frame */
#define EDGEGW_MIC_BYTES 4u
#define EDGEGW_OVERHEAD (EDGEGW_HEADER_BYTES + EDGEGW_MIC_BYTES) /* 13 bytes on air besides the payload */

/*
 * Write the frame for `payload` to `out` and return its length, len + EDGEGW_OVERHEAD; return 0
 * and leave `out` untouched when out_size is too small, so a short buffer cannot be overrun.
 *
 * `payload` must not overlap `out`, with one exception that saves a second buffer on a small
 * RAM: the payload may already sit at out + EDGEGW_HEADER_BYTES (build it there, then seal in
 * place). `payload` may be NULL when len is 0.
 */
size_t edgegw_seal(const uint8_t key[16], uint32_t device_id, uint32_t counter,
                   const uint8_t *payload, size_t len, uint8_t *out, size_t out_size);

/* The full 16-byte AES-CMAC (RFC 4493) of msg[0..len) with `key`; the MIC is its first 4 bytes. */
void edgegw_cmac(const uint8_t key[16], const uint8_t *msg, size_t len, uint8_t mac[16]);

/* One AES-128 block encryption (FIPS-197); exposed so a port can be checked against FIPS-197's
 * own test vectors before CMAC is. */
void edgegw_aes128_encrypt(const uint8_t key[16], const uint8_t in[16], uint8_t out[16]);

#ifdef __cplusplus
}
#endif

#endif /* EDGEGW_FRAME_H */
