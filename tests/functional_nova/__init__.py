# Before any test module imports Nova or oslo: eventlet's monkey patching,
# as sgxcloud.nova.testing.cloud applies it (see there).
import nova.tests.functional  # noqa: F401
