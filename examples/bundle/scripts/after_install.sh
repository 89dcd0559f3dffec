#!/bin/sh
set -eu
. ./deploy.env
echo "after install: $(ls "$APP_DIR" | wc -l) files in $APP_DIR"
