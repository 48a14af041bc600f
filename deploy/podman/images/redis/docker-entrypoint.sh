#!/bin/bash
set -euo pipefail
if [[ "${1:-}" == redis-server ]]; then
    chown redis:redis /data
    exec setpriv --reuid=redis --regid=redis --init-groups "$@"
fi
exec "$@"
