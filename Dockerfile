# Image for the gateway and the processor (the same image; the command picks the role):
#   docker run IMAGE python -m gateway        docker run IMAGE python -m processor
# It holds the services only: no bench/ or tests/. EXTRAS names optional dependencies to
# add, e.g. `--build-arg EXTRAS=admin` for `python -m gateway.admin mint|token` (PyJWT);
# deploy/docker-compose.yml builds it so, for trying the platform out.
ARG EXTRAS=""

FROM python:3.11-slim-bookworm AS build
ARG EXTRAS
RUN apt-get update && apt-get install -y --no-install-recommends gcc libssl-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY core core
COPY gateway gateway
COPY processor processor
RUN pip wheel --no-deps -w /wheels . \
    && pip wheel -w /wheels "$(ls /wheels/vote_platform-*.whl)${EXTRAS:+[$EXTRAS]}"

FROM python:3.11-slim-bookworm
ARG EXTRAS
RUN apt-get update && apt-get install -y --no-install-recommends libssl3 \
    && rm -rf /var/lib/apt/lists/* && useradd --system --uid 10001 vote \
    && mkdir -p /var/lib/vote && chown vote /var/lib/vote
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels \
        "vote-platform${EXTRAS:+[$EXTRAS]}" \
    && rm -rf /wheels
USER vote
ENV VOTE_HTTP_HOST=0.0.0.0 VOTE_STACK_DIR=/var/lib/vote
EXPOSE 8080 9100 9101
CMD ["python", "-m", "gateway"]
