#!/bin/sh
set -eu
. ./deploy.env
echo "before install: $APPLICATION_NAME will get s3://$BUNDLE_BUCKET/$BUNDLE_KEY (etag $BUNDLE_ETAG)"
mkdir -p "$APP_DIR"
