"""Plain-Python logic of each pipeline step (no orchestration imports)."""

__version__ = "0.1.0"
# The step image, fully qualified (podman, docker and the kubelet resolve it alike): the workflow's
# templates run it, and KServe's custom serving runtime serves from it.
STEP_IMAGE = f"docker.io/fashion-pipeline/steps:{__version__}"
