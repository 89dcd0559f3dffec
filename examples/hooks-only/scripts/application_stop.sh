#!/bin/sh
# ApplicationStop comes from the release being replaced: it knows what that release started.
set -eu
. "$(dirname "$0")/journal.sh"
record "stopping what the previous release started (in this sample: nothing)"
