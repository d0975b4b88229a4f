# The image every compose service runs: this project, installed from source.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY triggerbus ./triggerbus
COPY actors ./actors
COPY bus ./bus
COPY contracts ./contracts
COPY observability ./observability
COPY examples ./examples
RUN pip install --no-cache-dir .
ENV TRIGGERBUS_LOG_FORMAT=json \
    PYTHONUNBUFFERED=1
ENTRYPOINT ["triggerbus"]
