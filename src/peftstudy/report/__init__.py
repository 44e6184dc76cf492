"""The report: tidy tables -> a papermill-executed notebook (figures) -> a Jinja page."""
