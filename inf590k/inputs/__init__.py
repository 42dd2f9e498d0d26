"""What the build reads: source manifests, source folders and archives, image files.

OpenCV's own decoder limit is a backstop behind the header checks (`headers.py`); it is read
when cv2 is imported, so it is put in the environment here, before any module of this package
imports cv2 (ingest raises it for its workers when --max-pixels is higher).
"""

import os

from inf590k.inputs.headers import DEFAULT_MAX_PIXELS, OPENCV_PIXEL_LIMIT

os.environ.setdefault(OPENCV_PIXEL_LIMIT, str(DEFAULT_MAX_PIXELS))
