"""Scoring detections against ground truth: the VOC devkit metric and pycocotools."""
