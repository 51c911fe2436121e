#!/bin/sh
# As the official image's entrypoint: a bare `redis-server` (no config file)
# listens on every interface, so turn protected mode off unless told otherwise.
set -e
if [ "${1:-}" = "redis-server" ]; then
    case " $* " in
        *" --protected-mode "*) ;;
        *) set -- "$@" --protected-mode no ;;
    esac
fi
exec "$@"
