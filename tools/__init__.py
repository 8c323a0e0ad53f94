"""The `sppnet` command line: thin front ends over the packages."""
