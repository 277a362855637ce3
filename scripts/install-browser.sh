#!/usr/bin/env bash
# Headless Chromium + chromedriver (Debian's `chromium` and `chromium-driver`) for the chat page's
# browser test (tests/flows/test_chat_page.py). .ci/run calls it before `make test`.
# Does nothing when a browser and a driver are already there (Debian's, or Google Chrome with the
# chromedriver of GitHub's Ubuntu runners). Without root or apt-get it installs nothing and says so:
# the test is then skipped with that reason.
set -euo pipefail

has() { command -v "$1" >/dev/null 2>&1; }
driver_ok() { has chromedriver || [ -x "${CHROMEWEBDRIVER:-/nonexistent}/chromedriver" ]; }
if (has chromium || has google-chrome || has google-chrome-stable) && driver_ok; then
  echo "==> browser for the chat page test: already installed"
  exit 0
fi
if ! has apt-get || [ "$(id -u)" != 0 ]; then
  echo "==> not installing chromium (needs root and apt-get): the chat page's browser test will be skipped" >&2
  exit 0
fi
echo "==> installing chromium and chromium-driver (apt) for the chat page's browser test"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
chromium --version
