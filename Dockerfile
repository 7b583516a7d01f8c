# Countersign image for services mode. Not built on the project's CI machines (no Docker
# engine there); kept in step with the Makefile's install.
FROM python:3.13-slim
# The processes run as this unprivileged user, never root: a flaw in the app or a
# dependency then cannot rewrite the code or the image's system. Numeric, so an orchestrator
# can check it is not root (Kubernetes' runAsNonRoot) without reading /etc/passwd.
RUN groupadd --system --gid 10001 countersign \
    && useradd --system --uid 10001 --gid countersign --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin countersign
WORKDIR /app
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
COPY pyproject.toml constraints.txt README.md ./
COPY core core
COPY config config
COPY audit audit
COPY tools_registry tools_registry
COPY accounts accounts
COPY approvals approvals
COPY gateway gateway
COPY sandbox sandbox
COPY templates templates
COPY static static
COPY manage.py ./
# Installed and byte-compiled as root, so the code stays read-only to the app's user.
RUN pip install -c constraints.txt -e . && python -m compileall -q /app
# The two places the processes write, owned by the app's user and nothing else: var/ (the
# settings create var/static there at start; beat keeps its schedule file there; the
# embedded mode, without DATABASE_URL, its database and secret key) and /anchor, where
# docker-compose.yml mounts the audit anchor's volume (a new volume takes this owner).
RUN mkdir -p /app/var /anchor && chown countersign:countersign /app/var /anchor \
    && chmod 0750 /app/var /anchor
USER 10001:10001
EXPOSE 8000
CMD ["uvicorn", "config.asgi:application", "--host", "0.0.0.0", "--port", "8000", "--workers", "4"]
