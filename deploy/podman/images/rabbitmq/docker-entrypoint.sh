#!/bin/bash
set -euo pipefail
if [[ "${1:-}" != rabbitmq-server ]]; then
    exec "$@"
fi
conf=/etc/rabbitmq/conf.d/10-defaults.conf
{
    echo "loopback_users.guest = false"
    echo "listeners.tcp.default = 5672"
    echo "management.tcp.port = 15672"
    [[ -n "${RABBITMQ_DEFAULT_USER:-}" ]] && echo "default_user = $RABBITMQ_DEFAULT_USER"
    [[ -n "${RABBITMQ_DEFAULT_PASS:-}" ]] && echo "default_pass = $RABBITMQ_DEFAULT_PASS"
    [[ -n "${RABBITMQ_DEFAULT_VHOST:-}" ]] && echo "default_vhost = $RABBITMQ_DEFAULT_VHOST"
    true
} >"$conf"
chmod 640 "$conf"
chown root:rabbitmq "$conf"
mkdir -p /var/lib/rabbitmq /var/log/rabbitmq
chown -R rabbitmq:rabbitmq /var/lib/rabbitmq /var/log/rabbitmq
shift
exec setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups /usr/lib/rabbitmq/bin/rabbitmq-server "$@"
