/* tests/common/test_common.c: error trapping and SHA-256 against FIPS 180-2 vectors. */
#include <math.h>
#include <string.h>

#include "common/error.h"
#include "common/hash.h"
#include "testutil.h"

static void raise_error(int v) { E8Q_CHECK(v == 0, "tensor %s has value %d", "x.weight", v); }

static void test_error_trap(void **state) {
  (void)state;
  E8Q_EXPECT_FATAL(raise_error(7), "x.weight", "value 7");
  assert_string_equal(e8q_error_last(), "tensor x.weight has value 7");
  raise_error(0); /* no error, trap not armed: must simply return */
}

static void test_sha256_vectors(void **state) {
  (void)state;
  uint8_t d[32];
  char hex[65];
  e8q_sha256_bytes("abc", 3, d);
  e8q_hex(d, 32, hex);
  assert_string_equal(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  const char *m = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
  e8q_sha256 *h = e8q_sha256_new();
  for (size_t i = 0; i < strlen(m); i++) e8q_sha256_update(h, m + i, 1); /* streaming, byte by byte */
  e8q_sha256_finish(h, d);
  e8q_hex(d, 32, hex);
  assert_string_equal(hex, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_error_trap),
      cmocka_unit_test(test_sha256_vectors),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
