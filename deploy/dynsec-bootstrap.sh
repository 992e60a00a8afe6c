#!/bin/sh
# Bootstrap Mosquitto's dynamic-security configuration for healthmon (docs/deploy.md).
#
#   dynsec-bootstrap.sh init FILE      before the broker's first start: create FILE with
#                                      the admin client (does nothing if FILE exists)
#   dynsec-bootstrap.sh clients        against the running broker: the service's client
#                                      and the provisioner's client, with their roles
#                                      (repeatable; existing ones are kept)
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

# mosquitto_ctrl against the running broker; "already exists" is success (repeatable).
ctl() {
    if out=$(mosquitto_ctrl -h "${MQTT_HOST:-localhost}" -p "${MQTT_PORT:-1883}" \
        -u "$DYNSEC_ADMIN_USER" -P "$DYNSEC_ADMIN_PASSWORD" dynsec "$@" 2>&1); then
        return 0
    fi
    case "$out" in
        *"already exists"*) return 0 ;;
    esac
    echo "dynsec-bootstrap: dynsec $1 $2 failed: $out" >&2
    return 1
}

wait_for_broker() {
    i=0
    until mosquitto_ctrl -h "${MQTT_HOST:-localhost}" -p "${MQTT_PORT:-1883}" \
        -u "$DYNSEC_ADMIN_USER" -P "$DYNSEC_ADMIN_PASSWORD" dynsec getDefaultACLAccess \
        >/dev/null 2>&1; do
        i=$((i + 1))
        if [ "$i" -ge 60 ]; then
            echo "dynsec-bootstrap: broker at ${MQTT_HOST:-localhost}:${MQTT_PORT:-1883}" \
                "not answering as $DYNSEC_ADMIN_USER" >&2
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
        ctl createClient "$HEALTHMON_MQTT_USER" -p "$HEALTHMON_MQTT_PASSWORD"
        ctl addClientRole "$HEALTHMON_MQTT_USER" healthmon-service

        # Device provisioning: the dynsec control topics and nothing else (unlike the
        # admin role of `dynsec init`, which may also read every topic).
        ctl createRole dynsec-control
        ctl addRoleACL dynsec-control publishClientSend '$CONTROL/dynamic-security/#' allow
        ctl addRoleACL dynsec-control publishClientReceive '$CONTROL/dynamic-security/#' allow
        ctl addRoleACL dynsec-control subscribePattern '$CONTROL/dynamic-security/#' allow
        ctl createClient "$PROVISIONER_USER" -p "$PROVISIONER_PASSWORD"
        ctl addClientRole "$PROVISIONER_USER" dynsec-control
        echo "dynsec-bootstrap: clients $HEALTHMON_MQTT_USER and $PROVISIONER_USER ready"
        ;;
    *)
        echo "usage: dynsec-bootstrap.sh init FILE | clients" >&2
        exit 2
        ;;
esac
