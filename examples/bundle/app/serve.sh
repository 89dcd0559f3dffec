#!/bin/sh
# The example "service": in production this would be a systemd unit (see README, "Run apps as units").
echo "serving $(dirname "$0")"
