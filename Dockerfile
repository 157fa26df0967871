# etcdlock operator image: `docker build -t etcdlock .`; the entrypoint is `etcdlock operator`
# (manifests/base/operator.yaml passes its flags as args).

# Build stage: a wheel of the package and of every dependency of the operator (etcdlock[operator]; the
# sandbox, sandbox/, is test tooling and never goes in).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
# crds/ too: operator/etcdlock/crds links to it (the CRDs are package data).
COPY crds ./crds
COPY operator ./operator
RUN pip wheel --no-cache-dir --wheel-dir /wheels '.[operator]'

# Runtime stage: the wheels installed, no build tools, no root. etcdutl comes from etcd's own image: an
# EtcdCluster member restored from a backup runs this image's `etcdlock restore-member` (its init
# container), which turns the snapshot into the member's data with `etcdutl snapshot restore`.
FROM python:3.11-slim
COPY --from=registry.k8s.io/etcd:3.5.21-0 /usr/local/bin/etcdutl /usr/local/bin/etcdutl
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links=/wheels 'etcdlock[operator]' && rm -rf /wheels \
    && useradd --uid 65532 --user-group --no-create-home --shell /usr/sbin/nologin etcdlock
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 GRPC_VERBOSITY=ERROR
USER 65532:65532
EXPOSE 9090 9443
ENTRYPOINT ["etcdlock", "operator"]
