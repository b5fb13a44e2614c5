"""Images (issue 15): Dockerfile builds whose steps run as cgman containers, stored as an OCI
image layout in the state dir, unpacked once per layer into read-only overlay lower dirs.

dockerfile (the recipe), layers (tar <-> directory, whiteouts both ways, confined
extraction), store (the OCI layout: blobs, manifests, tags, import/export), build (the
builder: RUN as a container, COPY/ADD on an overlay, the cache), image (what `run` takes
from an image). Layer: above runtime (a RUN step is a container), below cli.
"""
