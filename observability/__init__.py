"""Observation: structlog configuration, and (soon) the Event Center and OpenTelemetry export.

Observation events never travel on the runtime stream; the runtime stream carries only product
events that chunks put into it.
"""
