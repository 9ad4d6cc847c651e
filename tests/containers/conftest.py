"""Markers of the container tests."""


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "image: builds the Docker image with podman and runs it (minutes; deselect with -m 'not image')",
    )
