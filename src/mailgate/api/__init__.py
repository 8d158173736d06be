"""The REST API (OpenAPI): everything the CLI and the web interface can do."""
