"""The toolstack (libxl + xl): xl.cfg parsing, the domain builder, the guest
launcher/monitor and the ``xl`` command line."""
