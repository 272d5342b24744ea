# syntax=docker/dockerfile:1
# The pybaetyl image: the `baetyl` command for the cloud (`baetyl up`) and the edge agent
# (`baetyl edge run`). Build: docker build -t pybaetyl:dev .
# Run: docker run -p 8883:8883 -p 9003:9003 -p 9004:9004 -v baetyl-data:/var/lib/baetyl \
#        -e BAETYL_API__HOST=0.0.0.0 pybaetyl:dev up

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY broker/ broker/
COPY certs/ certs/
COPY edge/ edge/
COPY management/ management/
COPY shadow/ shadow/
# Wheels of the project and of every dependency, so the final stage installs without a network;
# the dependencies at the versions the tests ran with (constraints.txt, see scripts/lock.sh).
RUN pip wheel --no-cache-dir --wheel-dir /wheels -c constraints.txt .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    BAETYL_DATA_DIR=/var/lib/baetyl
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels pybaetyl \
    && groupadd --system --gid 10001 baetyl \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/baetyl \
       --no-create-home --shell /usr/sbin/nologin baetyl \
    && install -d -o 10001 -g 10001 -m 0700 /var/lib/baetyl
USER 10001:10001
WORKDIR /var/lib/baetyl
# MQTT over TLS (embedded broker), activation (HTTPS), management API (HTTP).
EXPOSE 8883 9003 9004
ENTRYPOINT ["baetyl"]
CMD ["up"]
