#!/bin/sh
# AfterInstall: where a hooks-only bundle usually does its work.
set -eu
. "$(dirname "$0")/journal.sh"
record "a real bundle would pull its image or run its migrations here"
