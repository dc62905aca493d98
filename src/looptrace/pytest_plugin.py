"""pytest plugin (issue 5). Placeholder: registers nothing yet."""
