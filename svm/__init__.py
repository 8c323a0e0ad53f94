"""Per-class linear SVMs with hard-negative mining, and ridge bounding-box regressors."""
