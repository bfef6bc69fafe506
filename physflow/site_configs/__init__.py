"""Site knowledge as data: the built-in site YAMLs and what reads them.

``site`` holds the schema and the request checks, ``placeholders`` the per-user values
(``${account}``, ``--set``), ``loader`` finding, loading and writing site YAMLs. Nothing else in
physflow names a machine. Turning a site into executors (a Parsl Config, a Globus Compute
endpoint config) is dispatch's work (``physflow.dispatch``), so this package imports nothing of
it: site data sits below everything that uses it.
"""
