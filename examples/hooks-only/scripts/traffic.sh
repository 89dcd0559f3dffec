#!/bin/sh
# The four load-balancer events share this script. s3deploy manages no load balancer and skips them.
set -eu
. "$(dirname "$0")/journal.sh"
record "traffic event"
