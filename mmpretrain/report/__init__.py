"""`mmpretrain report`: a static HTML page with PNG plots of training runs and benchmark results (issue 12).

Modules: names (safe_name, shared with the benchmark writer), inputs (reading run and benchmark directories),
tables (what to show, pure functions), plots (matplotlib, Agg), page (sections and the jinja2 template), build
(the atomic write), cli (the subcommand). Importing this package or its cli imports neither matplotlib nor jinja2:
mmpretrain's parser is built on every command."""

from mmpretrain.report.names import safe_name

__all__ = ["safe_name"]
