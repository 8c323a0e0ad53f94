"""Region proposals: selective search (OpenCV contrib), cached per image, computed in parallel."""
