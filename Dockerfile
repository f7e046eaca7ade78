# swarmgate gateway image: `docker build -t swarmgate .`, then see compose.yaml.
# Stage 1 builds the wheel from the source tree; stage 2 installs only the wheel (with the
# PostgreSQL extra) into a slim image and runs it as an unprivileged user.
FROM python:3.11-slim AS build
WORKDIR /src
COPY . .
RUN pip install --no-cache-dir build==1.* && python -m build --wheel --outdir /dist

FROM python:3.11-slim
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/swarmgate --create-home swarmgate
COPY --from=build /dist/ /tmp/dist/
RUN wheel="$(ls /tmp/dist/swarmgate-*.whl)" \
    && pip install --no-cache-dir "${wheel}[postgresql]" \
    && rm -rf /tmp/dist
USER swarmgate
WORKDIR /var/lib/swarmgate
ENV SWARMGATE_HOST=0.0.0.0 \
    SWARMGATE_PORT=8080 \
    SWARMGATE_DATABASE_URL=sqlite:////var/lib/swarmgate/swarmgate.db \
    SWARMGATE_LOG_FORMAT=json \
    PYTHONUNBUFFERED=1
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 CMD ["python", "-c", "import os, sys, urllib.request; r = urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('SWARMGATE_PORT', '8080') + '/readyz', timeout=4); sys.exit(r.status != 200)"]
CMD ["swarmgate", "serve"]
