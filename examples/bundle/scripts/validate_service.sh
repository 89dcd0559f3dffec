#!/bin/sh
set -eu
. ./deploy.env
test -x "$APP_DIR/serve.sh" || { echo "serve.sh is missing or not executable" >&2; exit 1; }
grep -q "Deployed by s3deploy" "$APP_DIR/index.html"
echo "validated: $APP_DIR is serving deployment $(cat "$APP_DIR.running")"
