"""The lab report: its tables from the pipeline's artifacts (`tables`), its figures (`figures`), and the
rendering of its one template to LaTeX and Markdown (`render`)."""
