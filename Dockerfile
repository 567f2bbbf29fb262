# syntax=docker/dockerfile:1
# Build stage: a wheel of the project and its dependencies.
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY ingress ingress
COPY tls tls
COPY routing routing
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# Runtime stage: no compilers, no build files, a non-root user.
FROM python:3.11-slim-bookworm
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin ingress
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links=/wheels mta-ingress && rm -rf /wheels
USER 10001
# The KRA contract's ports: plain and PROXY-protocol variants of SMTP 25/587, HTTP and HTTPS.
EXPOSE 10025 11025 10587 11587 10080 11080 10443 11443
# Exec form: SIGTERM from the kubelet reaches the supervisor, which drains the workers.
ENTRYPOINT ["mta-ingress"]
CMD ["run"]
