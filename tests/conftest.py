"""Shared pytest set-up: offline Axolotl and a clean plugin manager per test."""

from __future__ import annotations

import os

import colorama
import pytest

# Without these, Axolotl's telemetry retries offline and can hang a process, and
# transformers tries to reach the model hub.
os.environ.setdefault("AXOLOTL_DO_NOT_TRACK", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Axolotl mirrors stdout into a debug log by replacing sys.stdout, which breaks
# pytest's output capture.
os.environ.setdefault("AXOLOTL_TEE_STDOUT", "0")

# Importing axolotl.cli configures Axolotl's logging, which wraps sys.stdout and
# sys.stderr with colorama. Wrapped while pytest captures them, they break the
# capture at exit, so the wrappers are removed again here.
import axolotl.cli  # noqa: E402,F401

colorama.deinit()


@pytest.fixture(autouse=True)
def reset_plugin_manager():
    """Forget plugins registered by a test, since Axolotl's manager is a singleton."""
    yield
    from axolotl.integrations.base import PluginManager

    PluginManager.get_instance().plugins.clear()
