"""Test-wide setup: 8 host CPU devices so sharding tests see a real mesh; tests pin their own meshes."""

import os

# Must run before JAX initialises its backends (conftest is imported before any test module).
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("REST_JAX_PROGRESS", "0")
