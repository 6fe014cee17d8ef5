# The one gwi image: every model's dependencies, entrypoint `gwi`.
#   docker build -t gwi .
#   docker run --rm --gpus all -v $PWD:/work gwi predict --checkpoint runs/x --test test --out submission.csv
# The default base is a plain Python; torch comes pinned to the version the tests run (TORCH_VERSION,
# the README's torch==...). On Linux PyPI's torch wheel is a CUDA build that brings its CUDA runtime
# and cuDNN as wheels, so the image runs on any host with an NVIDIA driver (and the container
# toolkit) and needs no CUDA base. Test builds pass a local base and put the CPU wheel of the same
# version in docker/wheels/, which the pin then accepts as it is.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}
ARG TORCH_VERSION=2.13.0

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/gwi \
    PATH=/opt/gwi/bin:$PATH

RUN python3 -m venv /opt/gwi

# the pin holds for every later install too: otherwise a dependency (torchvision, through timm) asks
# for the newest torch and pip replaces the one the tests run
ENV PIP_CONSTRAINT=/opt/gwi/constraints.txt
COPY docker/wheels/ /tmp/wheels/
RUN echo "torch==${TORCH_VERSION}" > /opt/gwi/constraints.txt \
    && if ls /tmp/wheels/*.whl >/dev/null 2>&1; then pip install /tmp/wheels/*.whl; fi && rm -rf /tmp/wheels \
    && pip install "torch==${TORCH_VERSION}"

# dependencies first, so a code change does not reinstall them
COPY pyproject.toml README.md /src/
# (the stub's build folder goes too: setuptools would keep its __init__.py, newer than the real one)
RUN mkdir -p /src/gwi && echo '__version__ = "0"' > /src/gwi/__init__.py \
    && pip install /src && pip uninstall -y gwi && rm -rf /src/build /src/*.egg-info
COPY gwi /src/gwi
RUN pip install --no-deps /src && rm -rf /src \
    && python3 -c "from gwi.models.registry import create_model, list_models; [create_model(m, 'tiny') for m in list_models()]"

RUN useradd --create-home --uid 1000 gwi && mkdir -p /work && chown gwi /work
USER gwi
WORKDIR /work
ENV GWI_HOME=/work/.gwi \
    GWI_CACHE=/home/gwi/.cache/gwi \
    MPLCONFIGDIR=/tmp/matplotlib

ENTRYPOINT ["gwi"]
CMD ["--help"]
