"""The vocabulary every stage shares: config, boxes, detections, errors, images, caches.

Nothing here imports anything else of the project, so ``proposals/``, ``features/`` and ``svm/``
can build on it without pulling in the detector.
"""
