#!/bin/sh
# A serverless worker in busybox sh and wget, speaking the runpod worker protocol (the same URLs
# and token the runpod SDK gets: RUNPOD_WEBHOOK_GET_JOB, RUNPOD_WEBHOOK_POST_OUTPUT,
# RUNPOD_WEBHOOK_PING, RUNPOD_AI_API_KEY, RUNPOD_POD_ID). Its handler echoes each job's input back
# as its output: {"output": <input>}, after `sleep` seconds when the input has a whole number
# `sleep` (a long job). Runs on the local test image (`local/busybox:latest`: sh, wget, sed,
# sleep) with `sh worker.sh`.
#
# It pings every RUNPOD_PING_INTERVAL ms with the job it runs, so the platform knows both the
# worker and its job are alive; a worker that stops pinging loses its job to another worker.
set -u

: "${RUNPOD_WEBHOOK_GET_JOB:?}" "${RUNPOD_WEBHOOK_POST_OUTPUT:?}" "${RUNPOD_WEBHOOK_PING:?}"
: "${RUNPOD_AI_API_KEY:?}" "${RUNPOD_POD_ID:?}"
ME="$RUNPOD_POD_ID"
TAKE="${RUNPOD_WEBHOOK_GET_JOB//\$ID/$ME}"
DONE="${RUNPOD_WEBHOOK_POST_OUTPUT//\$RUNPOD_POD_ID/$ME}"
PING="${RUNPOD_WEBHOOK_PING//\$RUNPOD_POD_ID/$ME}"
EVERY=$(( ${RUNPOD_PING_INTERVAL:-10000} / 1000 ))
[ "$EVERY" -ge 1 ] || EVERY=1
STATE="${TMPDIR:-/tmp}/worker-$ME"
mkdir -p "$STATE"
: > "$STATE/running"

call() { # URL [BODY]: the response body on stdout
    if [ $# -gt 1 ]; then
        wget -q -O - --header "Authorization: $RUNPOD_AI_API_KEY" --post-data "$2" "$1"
    else
        wget -q -O - --header "Authorization: $RUNPOD_AI_API_KEY" "$1"
    fi
}

(   # the heartbeat, with the job in progress (if any)
    while :; do
        call "$PING&job_id=$(cat "$STATE/running")" > /dev/null 2>&1
        sleep "$EVERY"
    done
) &

while :; do
    job=$(call "$TAKE&job_in_progress=0") || { sleep 1; continue; }
    [ -n "$job" ] || continue   # 204: no job within the long poll
    # The take answers {"id":"…","input":…} (compact; the input as the client sent it).
    id=$(printf '%s' "$job" | sed -n 's/^{"id":"\([^"]*\)","input":.*}$/\1/p')
    input=$(printf '%s' "$job" | sed -n 's/^{"id":"[^"]*","input":\(.*\)}$/\1/p')
    [ -n "$id" ] || { echo "unexpected job: $job" >&2; continue; }
    printf '%s' "$id" > "$STATE/running"
    # An input object with a whole number `sleep` takes that many seconds (a long job).
    took=$(printf '%s' "$input" | sed -n 's/^{.*"sleep": *\([0-9][0-9]*\) *[,}].*$/\1/p')
    [ -z "$took" ] || sleep "$took"
    url="${DONE//\$ID/$id}&isStream=false"
    # Tried again while the api is unreachable, but not forever: a result refused (the job was
    # cancelled, or timed out and went to another worker) stays refused.
    tries=0
    until call "$url" "{\"output\":$input}" > /dev/null; do
        tries=$((tries + 1)); [ "$tries" -lt 5 ] || break; sleep 1
    done
    : > "$STATE/running"
done
