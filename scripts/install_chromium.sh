#!/usr/bin/env bash
# Headless Chromium for the browser tests (tests/test_save_html.py, tests/test_studio_*.py) on Debian/Ubuntu.
# Does nothing when Chromium is already installed; without apt-get or root rights it says so and
# leaves the test to skip itself.
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_chromium.sh: no apt-get; install Chromium yourself or the browser test is skipped" >&2
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
        echo "install_chromium.sh: not root and no sudo; the browser test is skipped" >&2
        exit 0
    fi
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
if ! { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium chromium-driver; }; then
    echo "install_chromium.sh: apt-get could not install chromium; the browser test is skipped" >&2
fi
