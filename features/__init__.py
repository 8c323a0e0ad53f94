"""Features: backbones (conv layers once per image per scale), window projection, spatial pyramid pooling."""
