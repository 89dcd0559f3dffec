#!/bin/sh
# BeforeInstall: get ready. Install copies nothing from this bundle (it has no `files`).
set -eu
. "$(dirname "$0")/journal.sh"
record "this bundle has no files: Install will copy nothing"
