"""blkback: block devices for guests, served from raw image files.

``device`` (the ``vbd`` DeviceDriver: XenStore keys, connect/disconnect),
``ring`` (request parsing and validation, pure), ``serve`` (the request
loop of one connection), ``grants`` (mapping, persistent grants), ``io``
(the image file). Importing the package registers the driver.
"""

from backendd.blkback import device  # noqa: F401 (registers the vbd driver)
