#!/bin/sh
# ApplicationStart: start or reload the service.
set -eu
. "$(dirname "$0")/journal.sh"
record "a real bundle would start or reload its service here"
