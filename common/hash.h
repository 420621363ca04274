/* common/hash.h: SHA-256 (OpenSSL libcrypto) for artifacts, journals, fingerprints. */
#ifndef E8Q_COMMON_HASH_H
#define E8Q_COMMON_HASH_H

#include <stddef.h>
#include <stdint.h>

typedef struct e8q_sha256 e8q_sha256; /* streaming context */

e8q_sha256 *e8q_sha256_new(void);
void e8q_sha256_update(e8q_sha256 *h, const void *data, size_t n);
/* writes 32 bytes and frees the context */
void e8q_sha256_finish(e8q_sha256 *h, uint8_t out[32]);
/* one shot */
void e8q_sha256_bytes(const void *data, size_t n, uint8_t out[32]);
/* lowercase hex of a digest into out[65] */
void e8q_hex(const uint8_t *digest, size_t n, char *out);
/* sha256 of a whole file as hex into out[65]; fatal error naming the file if unreadable */
void e8q_sha256_file_hex(const char *path, char out[65]);

#endif
