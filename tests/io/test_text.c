/* tests/io/test_text.c: UTF-8 validation, lines, id files. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/text.h"
#include "testutil.h"

static void test_text_placeholder(void **state) { (void)state; }

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_text_placeholder),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
