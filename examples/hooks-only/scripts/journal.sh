# Sourced by every hook script of this bundle. It is found next to the script, not in the working
# directory: the CodeDeploy agent does not run hooks in the bundle folder (s3deploy does).
. "$(dirname "$0")/journal.env"

# record MESSAGE: append this event to the journal; MESSAGE goes to the deployment's log.
record() {
    mkdir -p "$(dirname "$JOURNAL")"
    echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) $LIFECYCLE_EVENT $DEPLOYMENT_ID" >>"$JOURNAL"
    echo "$1"
}
