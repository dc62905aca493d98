"""The FastAPI service with OpenTelemetry set up in its own code (a service that does not
use ``opentelemetry-instrument``, whose auto-instrumentation does not follow uvicorn's
``--workers``): each worker exports its request spans over OTLP, with its pid."""

import os

from fastapi_app import app
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

provider = TracerProvider(resource=Resource.create({"process.pid": os.getpid()}))
provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
trace.set_tracer_provider(provider)
FastAPIInstrumentor.instrument_app(app)

__all__ = ["app"]
