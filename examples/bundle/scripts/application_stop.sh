#!/bin/sh
# Runs from the PREVIOUS release: it knows how to stop what that release started.
set -eu
. "$S3DEPLOY_BUNDLE_DIR/deploy.env"
echo "stopping the app in $APP_DIR (deployment $DEPLOYMENT_ID)"
rm -f "$APP_DIR.running"
