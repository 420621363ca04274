/* common/hash.c: SHA-256 through OpenSSL's EVP interface. */
#include "common/hash.h"

#include <errno.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/error.h"
#include "common/file.h"

struct e8q_sha256 {
  EVP_MD_CTX *ctx;
};

e8q_sha256 *e8q_sha256_new(void) {
  e8q_sha256 *h = e8q_malloc(sizeof *h, "sha256 context");
  h->ctx = EVP_MD_CTX_new();
  E8Q_CHECK(h->ctx && EVP_DigestInit_ex(h->ctx, EVP_sha256(), NULL) == 1, "OpenSSL SHA-256 init failed");
  return h;
}

void e8q_sha256_update(e8q_sha256 *h, const void *data, size_t n) {
  E8Q_CHECK(EVP_DigestUpdate(h->ctx, data, n) == 1, "OpenSSL SHA-256 update failed");
}

void e8q_sha256_finish(e8q_sha256 *h, uint8_t out[32]) {
  unsigned int len = 0;
  E8Q_CHECK(EVP_DigestFinal_ex(h->ctx, out, &len) == 1 && len == 32, "OpenSSL SHA-256 final failed");
  EVP_MD_CTX_free(h->ctx);
  free(h);
}

void e8q_sha256_bytes(const void *data, size_t n, uint8_t out[32]) {
  e8q_sha256 *h = e8q_sha256_new();
  e8q_sha256_update(h, data, n);
  e8q_sha256_finish(h, out);
}

void e8q_hex(const uint8_t *digest, size_t n, char *out) {
  static const char hx[] = "0123456789abcdef";
  for (size_t i = 0; i < n; i++) {
    out[2 * i] = hx[digest[i] >> 4];
    out[2 * i + 1] = hx[digest[i] & 15];
  }
  out[2 * n] = '\0';
}

void e8q_sha256_file_hex(const char *path, char out[65]) {
  FILE *f = e8q_fopen_regular(path, "file to hash"); /* a FIFO would never end */
  e8q_sha256 *h = e8q_sha256_new();
  static _Thread_local unsigned char buf[1 << 16];
  size_t got;
  while ((got = fread(buf, 1, sizeof buf, f)) > 0) e8q_sha256_update(h, buf, got);
  E8Q_CHECK_ERRNO(!ferror(f), "read error while hashing %s", path);
  fclose(f);
  uint8_t d[32];
  e8q_sha256_finish(h, d);
  e8q_hex(d, 32, out);
}
