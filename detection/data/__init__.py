"""Data sets and the files detections are exchanged in: VOC, COCO, devkit result files, the generated sets."""
