"""The HTML report: runs, tables, figures."""
