"""Detection: the layers above the stage packages, from the shared vocabulary up to whole runs.

Imports go one way, downwards (``tests/test_layers.py`` checks it)::

    tools/                      the ``sppnet`` command: argparse and printing
    detection.runs              test, batch detection, benchmark, ablation
    detection.training          the stage plan and the trainer
    detection.export            beside training: the scoring graph as ONNX / TorchScript
    detection.detector          the detector and its model file (the Python API)
    detection.results           one image's Result: plot, save, to_coco
    detection.evaluation        VOC devkit metric, pycocotools
    detection.visualize         pictures of detections and PR curves
    detection.data              VOC, COCO, devkit files, the generated data sets
    proposals/ features/ svm/   the stages; from detection they import only detection.core
    detection.core              config, boxes, detections, errors, images, caches

The Python API: ``from detection.detector import Detector``.
"""
