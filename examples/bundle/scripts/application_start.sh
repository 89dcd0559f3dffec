#!/bin/sh
set -eu
. ./deploy.env
"$APP_DIR/serve.sh"
echo "$DEPLOYMENT_ID" > "$APP_DIR.running"
