#!/bin/sh
# ValidateService: this deployment's earlier events all ran, in order.
set -eu
. "$(dirname "$0")/journal.sh"
ran=$(awk -v id="$DEPLOYMENT_ID" '$3 == id && $2 ~ /^(BeforeInstall|AfterInstall|ApplicationStart)$/ {
    printf "%s ", $2 }' "$JOURNAL")
if [ "$ran" != "BeforeInstall AfterInstall ApplicationStart " ]; then
    echo "expected BeforeInstall AfterInstall ApplicationStart in $JOURNAL, found: ${ran:-nothing}" >&2
    exit 1
fi
record "BeforeInstall, AfterInstall and ApplicationStart ran, in order"
