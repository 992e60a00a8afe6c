#!/bin/sh
# Bootstrap Mosquitto's dynamic-security configuration for healthmon (docs/deploy.md).
#
#   dynsec-bootstrap.sh init FILE      before the broker's first start: create FILE with
#                                      the admin client (does nothing if FILE exists)
#   dynsec-bootstrap.sh clients        against the running broker: the service's client
#                                      and the provisioner's client, with their roles
#                                      (repeatable: converges, resets their passwords)
#
# Environment:
#   DYNSEC_ADMIN_USER, DYNSEC_ADMIN_PASSWORD   the dynsec admin (humans, mosquitto_ctrl)
#   HEALTHMON_MQTT_USER, HEALTHMON_MQTT_PASSWORD
#                                              the service: reads devices, publishes alerts
#   PROVISIONER_USER, PROVISIONER_PASSWORD     the service's dynsec client (device identity)
#   MQTT_HOST (default localhost), MQTT_PORT (default 1883)
set -eu

need() {
    eval "v=\${$1:-}"
    if [ -z "$v" ]; then
        echo "dynsec-bootstrap: $1 is not set" >&2
        exit 2
    fi
}

ctrl() {
    mosquitto_ctrl -h "${MQTT_HOST:-localhost}" -p "${MQTT_PORT:-1883}" \
        -u "$DYNSEC_ADMIN_USER" -P "$DYNSEC_ADMIN_PASSWORD" dynsec "$@" 2>&1
}

# One dynsec command against the running broker. mosquitto_ctrl 2.0 exits 0 even when
# the command fails or the broker refuses it, so its output decides; "already exists"
# is success (the script is repeatable).
ctl() {
    out=$(ctrl "$@") || true
    case "$out" in
        *"already exists"*) return 0 ;;
        *rror*)
            echo "dynsec-bootstrap: dynsec $1 $2 failed: $out" >&2
            return 1
            ;;
    esac
}

# A client with this password and role: created if missing, else password reset (so
# rotating a secret in .env and re-running takes effect) and role added if absent.
ensure_client() {
    ctl createClient "$1" -p "$2"
    ctl setClientPassword "$1" "$2"
    out=$(ctrl getClient "$1") || true
    case "$out" in
        *" $3 (priority"*) ;;
        *) ctl addClientRole "$1" "$3" ;;  # a second add is an error in 2.0.11
    esac
}

wait_for_broker() {
    i=0
    while :; do
        out=$(ctrl getDefaultACLAccess) || true
        case "$out" in
            *"Not authorized"* | *"not authorised"*)
                echo "dynsec-bootstrap: the broker refuses $DYNSEC_ADMIN_USER: $out" >&2
                exit 1
                ;;
            *rror*) ;;
            *) return 0 ;;
        esac
        i=$((i + 1))
        if [ "$i" -ge 60 ]; then
            echo "dynsec-bootstrap: no broker at ${MQTT_HOST:-localhost}:${MQTT_PORT:-1883}:" \
                "$out" >&2
            exit 1
        fi
        sleep 1
    done
}

case "${1:-}" in
    init)
        file=${2:?usage: dynsec-bootstrap.sh init FILE}
        need DYNSEC_ADMIN_USER
        need DYNSEC_ADMIN_PASSWORD
        if [ -e "$file" ]; then
            echo "dynsec-bootstrap: $file exists, kept"
            exit 0
        fi
        mosquitto_ctrl dynsec init "$file" "$DYNSEC_ADMIN_USER" "$DYNSEC_ADMIN_PASSWORD"
        ;;
    clients)
        need DYNSEC_ADMIN_USER
        need DYNSEC_ADMIN_PASSWORD
        need HEALTHMON_MQTT_USER
        need HEALTHMON_MQTT_PASSWORD
        need PROVISIONER_USER
        need PROVISIONER_PASSWORD
        wait_for_broker

        # The service: subscribes to every device topic (also as a shared subscription
        # of several workers) and publishes alert state changes.
        ctl createRole healthmon-service
        ctl addRoleACL healthmon-service subscribePattern 'hm/v1/#' allow
        ctl addRoleACL healthmon-service subscribePattern '$share/+/hm/v1/#' allow
        ctl addRoleACL healthmon-service publishClientSend 'hm/alerts/v1/#' allow
        ensure_client "$HEALTHMON_MQTT_USER" "$HEALTHMON_MQTT_PASSWORD" healthmon-service

        # Device provisioning: the dynsec control topics and nothing else (unlike the
        # admin role of `dynsec init`, which may also read every topic).
        ctl createRole dynsec-control
        ctl addRoleACL dynsec-control publishClientSend '$CONTROL/dynamic-security/#' allow
        ctl addRoleACL dynsec-control publishClientReceive '$CONTROL/dynamic-security/#' allow
        ctl addRoleACL dynsec-control subscribePattern '$CONTROL/dynamic-security/#' allow
        ensure_client "$PROVISIONER_USER" "$PROVISIONER_PASSWORD" dynsec-control
        echo "dynsec-bootstrap: clients $HEALTHMON_MQTT_USER and $PROVISIONER_USER ready"
        ;;
    *)
        echo "usage: dynsec-bootstrap.sh init FILE | clients" >&2
        exit 2
        ;;
esac
