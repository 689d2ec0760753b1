"""xenstored's protocol layer: requests parsed from ``xsd_sockmsg`` payloads.

The framing itself (``xsd_sockmsg`` headers, error names) is shared with the
clients and lives in :mod:`libxen.xenstore.wire` and
:mod:`libxen.xenstore.errors`.
"""
