"""Spec files uploaded to S3: CSV/JSON parsed into specs and rejected rows; the SQS notifications announcing them."""

from __future__ import annotations

from fractal_pipeline.specfiles.parse import (
    FORMATS,
    MAX_BYTES,
    MAX_ROWS,
    MAX_VALUE_CHARS,
    REQUIRED,
    RejectedRow,
    SpecFile,
    file_format,
    oversize_error,
    parse_spec_file,
)
from fractal_pipeline.specfiles.queue import (
    QUEUE_ENV,
    QueueMessage,
    SpecQueue,
    announced_files,
    queue_error,
    validate_queue,
)

__all__ = [
    "FORMATS",
    "MAX_BYTES",
    "MAX_ROWS",
    "MAX_VALUE_CHARS",
    "QUEUE_ENV",
    "REQUIRED",
    "QueueMessage",
    "RejectedRow",
    "SpecFile",
    "SpecQueue",
    "announced_files",
    "file_format",
    "oversize_error",
    "parse_spec_file",
    "queue_error",
    "validate_queue",
]
