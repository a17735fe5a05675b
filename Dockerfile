# syntax=docker/dockerfile:1
# The SMS billing worker: `docker build -t sms-billing-worker .`
# ENTRYPOINT is the CLI, so `docker run IMAGE migrate|lag|account ID|...` runs other commands.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY worker ./worker
COPY schemas ./schemas
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install .

FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    BILLING_HTTP_HOST=0.0.0.0 \
    BILLING_HTTP_PORT=8080
RUN groupadd --system --gid 10001 billing \
    && useradd --system --uid 10001 --gid billing --no-create-home \
       --shell /usr/sbin/nologin billing
COPY --from=build /opt/venv /opt/venv
USER billing:billing
WORKDIR /tmp
EXPOSE 8080
# SIGTERM lets the worker finish the batch in hand and commit (see stop_grace_period in compose).
STOPSIGNAL SIGTERM
ENTRYPOINT ["billing-worker"]
CMD ["run"]
