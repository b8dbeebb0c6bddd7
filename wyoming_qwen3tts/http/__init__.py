"""The OpenAI-compatible HTTP front end: routes, errors, encodings and the try-it page."""
