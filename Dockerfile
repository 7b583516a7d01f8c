# Countersign image for services mode. Not built on the project's CI machines (no Docker
# engine there); kept in step with the Makefile's install.
FROM python:3.13-slim
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
RUN pip install -c constraints.txt -e .
EXPOSE 8000
CMD ["uvicorn", "config.asgi:application", "--host", "0.0.0.0", "--port", "8000", "--workers", "4"]
