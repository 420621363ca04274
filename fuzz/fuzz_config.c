/* fuzz/fuzz_config.c: config.json as parsed JSON through e8q_config_from_json (every check of a
 * Hugging Face config: types, ranges, refused features). */
#include <cjson/cJSON.h>

#include "harness.h"
#include "io/config.h"

static void parse(void *a) {
  e8q_config c;
  e8q_config_from_json(a, "fuzz/config.json", &c);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
  fz_init();
  cJSON *root = cJSON_ParseWithLength((const char *)data, n);
  if (!root) return 0;
  fz_call(parse, root);
  cJSON_Delete(root);
  return 0;
}
