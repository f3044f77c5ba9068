# The image every application service of docker-compose.yml runs: the `xinyi` command.
# No identity is baked in: docker-compose.yml mounts ./certs read-only at /certs.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# The repository, as far as the installed command needs it. Copied by name rather than
# `COPY . .`, so that local files - certs/ with the root key, .venv, demo-run/ - never end up
# in an image layer.
COPY pyproject.toml ./
COPY xinyi ./xinyi
COPY node ./node
COPY registry ./registry
COPY policies ./policies

# The wheel carries the default Cedar policies (xinyi/_policies); check at build time that they load.
# Operators who keep their own policies mount them and set XINYI_POLICY_DIR (or pass --policies).
RUN pip install . \
 && cd / \
 && python -c 'from xinyi.policy import Authorizer; Authorizer.from_dir()'

WORKDIR /
ENTRYPOINT ["xinyi"]
CMD ["--help"]
