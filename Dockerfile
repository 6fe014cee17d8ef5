# The one gwi image: every model's dependencies, entrypoint `gwi`.
#   docker build -t gwi .
#   docker run --rm --gpus all -v $PWD:/work gwi predict --checkpoint runs/x --test test --out submission.csv
# BASE_IMAGE is a PyTorch CUDA runtime; its torch is kept (the venv sees the system site-packages and
# gwi asks for torch>=2.3). Test builds pass a local base and put a torch wheel in docker/wheels/.
ARG BASE_IMAGE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime
FROM ${BASE_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/gwi \
    PATH=/opt/gwi/bin:$PATH

RUN python3 -m venv --system-site-packages /opt/gwi

# wheels shipped in the build context (none for the CUDA base; the CPU torch wheel for test builds)
COPY docker/wheels/ /tmp/wheels/
RUN if ls /tmp/wheels/*.whl >/dev/null 2>&1; then pip install /tmp/wheels/*.whl; fi && rm -rf /tmp/wheels

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
