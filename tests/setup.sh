#!/bin/sh
# Test set-up: the package with its test extras (CPU torch from the exact version), and a headless browser
# (Debian's chromium and chromedriver) for the app's end-to-end test, installed when missing and we are root.
set -e
pip install -q torch==2.13.0 -e ".[test]"
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "tests/setup.sh: chromium/chromedriver missing and not root: the browser test will be skipped" >&2
  fi
fi
