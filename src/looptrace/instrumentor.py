"""OpenTelemetry instrumentor entry point (issue 3). Placeholder."""
