#!/bin/sh
# Sign a bundle for s3deploy and upload it with its signature, with only OpenSSH, coreutils and the
# aws CLI: for CI systems without s3deploy. The format and why it is so: docs/signing.md.
#
# usage: sign-and-upload.sh BUNDLE BUCKET KEY SIGNING_KEY [SERIAL]
#   BUNDLE       the zip (or tar) to deploy
#   BUCKET, KEY  exactly the s3_bucket and target_file_key of the hosts' config.ini section
#   SIGNING_KEY  a private key file, or a public key whose private half ssh-agent holds
#   SERIAL       a number that only goes up (default: the current time in milliseconds)
# The aws CLI takes credentials, region and endpoint (AWS_ENDPOINT_URL) from its usual places.
set -eu

if [ $# -lt 4 ] || [ $# -gt 5 ]; then
    echo "usage: $0 BUNDLE BUCKET KEY SIGNING_KEY [SERIAL]" >&2
    exit 2
fi
bundle=$1 bucket=$2 key=$3 signing_key=$4
serial=${5:-$(date +%s%3N)}
case $serial in
    *N) serial=$(($(date +%s) * 1000)) ;;  # a date(1) without %N (BSD, macOS)
esac
case $serial in
    '' | *[!0-9]*) echo "$0: SERIAL must be a whole number, got '$serial'" >&2; exit 2 ;;
esac
case $bucket$key in
    *[\"\\]* | *[[:cntrl:]]*)
        echo "$0: BUCKET and KEY must not hold \" or \\ or control characters (printf writes them into JSON as they are)" >&2
        exit 2 ;;
esac
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The manifest: which object, which bytes, which serial (SPEC §11).
sha256=$(sha256sum "$bundle" | cut -d ' ' -f 1)
size=$(wc -c < "$bundle" | tr -d ' ')
printf '{"v": 1, "bucket": "%s", "key": "%s", "sha256": "%s", "size": %s, "serial": %s}' \
    "$bucket" "$key" "$sha256" "$size" "$serial" > "$work/manifest"

# Its signature, namespace s3deploy: ssh-keygen writes manifest.sig beside it.
ssh-keygen -Y sign -n s3deploy -f "$signing_key" "$work/manifest"

# Both go into the object's user metadata: base64 without line breaks, armour lines dropped.
manifest=$(base64 < "$work/manifest" | tr -d '\n')
signature=$(sed '1d;$d' "$work/manifest.sig" | tr -d '\n')
aws s3 cp "$bundle" "s3://$bucket/$key" \
    --metadata "{\"s3deploy-manifest\": \"$manifest\", \"s3deploy-signature\": \"$signature\"}"
